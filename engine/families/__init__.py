"""Model families: what differs between SD 1.x, SDXL and later architectures lives here, nowhere else."""
