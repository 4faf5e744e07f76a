"""ControlNet, as the sd-webui-controlnet extension's API offers it: preprocessors ("modules") and units."""
