"""madrec: masked-diffusion generative recommendation on semantic IDs."""

__version__ = "0.1.0"
