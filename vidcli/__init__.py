"""vidcli: text-to-video diffusion in the latent space of high-compression video autoencoders."""

__version__ = "0.1.0"
