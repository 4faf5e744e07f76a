"""The generation tasks (txt2img, img2img, SD upscale): the plan of a request and running it."""
