"""The samplers and schedules of A1111's table, seeds and noise, and the denoising loop."""
