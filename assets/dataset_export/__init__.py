"""Dataset export: the SFT mixture as a Hugging Face `datasets` folder with its dataset card."""
