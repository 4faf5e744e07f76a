"""ControlNet, as the sd-webui-controlnet extension offers it: model files and preprocessors."""
