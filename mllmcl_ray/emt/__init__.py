"""EMT (Zhai et al.) beyond the fine-tuning study: off-the-shelf MLLMs against their
vision towers (§4.1, Fig. 4: `off_the_shelf`) and vision-encoder forgetting (§3:
`vision`)."""
