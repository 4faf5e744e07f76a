"""ControlNet, as the sd-webui-controlnet extension offers it: model files, preprocessors ("modules") and units."""
