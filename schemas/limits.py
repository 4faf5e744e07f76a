"""Request limits: what one job may ask for. The only place these numbers live (README quotes them)."""

MIN_SIDE = 64
MAX_SIDE = 2048  # A1111's UI maximum for width and height
SIDE_MULTIPLE = 8  # the VAE's scale factor: latents are (H/8, W/8)
MAX_STEPS = 150  # A1111's UI maximum
MAX_BATCH_SIZE = 8  # A1111's UI maximum
MAX_N_ITER = 100  # A1111's UI maximum
MAX_IMAGES = 100  # batch_size * n_iter
MIN_CFG_SCALE = 1.0
MAX_CFG_SCALE = 30.0
SEED_RANGE = 4294967294  # -1 picks a seed in [0, SEED_RANGE), as A1111 does
MAX_HIRES_SIDE = 4096  # hires fix output, per side
