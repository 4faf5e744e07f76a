"""A1111 1.10's server options (GET/POST /sdapi/v1/options, a request's override_settings), each with A1111's
default: its own, those of its built-in extensions, and ControlNet's.

Options that change what this worker generates (or soon will) are typed fields of `Options`, with their
bounds or choices; the engine also checks some against the loaded model (CLIP skip's depth, the checkpoint
and VAE names). Every other option (UI_OPTIONS: A1111's web UI, saving and training settings, and
generation settings this worker does not implement) is stored and read back as given, with no effect.
A key that is no A1111 option is not an `Options` field: POST /options ignores it, override_settings refuses it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model

from . import limits

# What a client can't set (A1111 keeps them whatever the API sends): the loaded checkpoint's sha256, and the
# options A1111 restricts from its API.
READ_ONLY = frozenset({"sd_checkpoint_hash", "api_enable_requests", "api_forbid_local_requests", "api_useragent"})

# ---------------------------------------------------------------- stored as given, in A1111's sections
UI_OPTIONS: dict[str, Any] = {
    # Saving images/grids
    "samples_save": True,
    "samples_filename_pattern": "",
    "save_images_add_number": True,
    "save_images_replace_action": "Replace",
    "grid_save": True,
    "grid_format": "png",
    "grid_extended_filename": False,
    "grid_only_if_multiple": True,
    "grid_prevent_empty_spots": False,
    "grid_zip_filename_pattern": "",
    "n_rows": -1,
    "font": "",
    "grid_text_active_color": "#000000",
    "grid_text_inactive_color": "#999999",
    "grid_background_color": "#ffffff",
    "save_images_before_face_restoration": False,
    "save_images_before_highres_fix": False,
    "save_images_before_color_correction": False,
    "save_mask": False,
    "save_mask_composite": False,
    "webp_lossless": False,
    "export_for_4chan": True,
    "img_downscale_threshold": 4.0,
    "target_side_length": 4000,
    "img_max_size_mp": 200,
    "use_original_name_batch": True,
    "use_upscaler_name_as_suffix": False,
    "save_selected_only": True,
    "save_write_log_csv": True,
    "save_init_img": False,
    "temp_dir": "",
    "clean_temp_dir_at_start": False,
    "save_incomplete_images": False,
    "notification_audio": True,
    "notification_volume": 100,
    # Paths for saving
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images",
    "outdir_init_images": "outputs/init-images",
    # Saving to a directory
    "save_to_dirs": True,
    "grid_save_to_dirs": True,
    "use_save_to_dirs_for_ui": False,
    "directories_filename_pattern": "[date]",
    "directories_max_prompt_words": 8,
    # Upscaling
    "ESRGAN_tile": 192,
    "ESRGAN_tile_overlap": 8,
    "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"],
    "dat_enabled_models": ["DAT x2", "DAT x3", "DAT x4"],
    "DAT_tile": 192,
    "DAT_tile_overlap": 8,
    "upscaler_for_img2img": None,
    "set_scale_by_when_changing_upscaler": False,
    # Face restoration
    "face_restoration_unload": False,
    # System
    "auto_launch_browser": "Local",
    "enable_console_prompts": False,
    "show_warnings": False,
    "show_gradio_deprecation_warnings": True,
    "memmon_poll_rate": 8,
    "samples_log_stdout": False,
    "multiple_tqdm": True,
    "enable_upscale_progressbar": True,
    "print_hypernet_extra": False,
    "list_hidden_files": True,
    "disable_mmap_load_safetensors": False,
    "hide_ldm_prints": True,
    "dump_stacks_on_signal": False,
    # Profiler
    "profiling_enable": False,
    "profiling_activities": ["CPU"],
    "profiling_record_shapes": True,
    "profiling_profile_memory": True,
    "profiling_with_stack": True,
    "profiling_filename": "trace.json",
    # API (READ_ONLY)
    "api_enable_requests": False,  # A1111: True; this worker never fetches image URLs (no request reaches a host)
    "api_forbid_local_requests": True,
    "api_useragent": "",
    # Training
    "unload_models_when_training": False,
    "pin_memory": False,
    "save_optimizer_state": False,
    "save_training_settings_to_txt": True,
    "dataset_filename_word_regex": "",
    "dataset_filename_join_string": " ",
    "training_image_repeats_per_epoch": 1,
    "training_write_csv_every": 500,
    "training_xattention_optimizations": False,
    "training_enable_tensorboard": False,
    "training_tensorboard_save_images": False,
    "training_tensorboard_flush_every": 120,
    # Stable Diffusion
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": True,
    "sd_checkpoint_cache": 0,
    "sd_unet": "Automatic",
    "enable_quantization": False,
    "emphasis": "Original",
    "enable_batch_seeds": True,
    "comma_padding_backtrack": 20,
    "sdxl_clip_l_skip": False,
    "upcast_attn": False,
    "tiling": False,
    # Stable Diffusion 3
    "sd3_enable_t5": False,
    # VAE
    "sd_vae_checkpoint_cache": 0,
    "sd_vae_overrides_per_model_preferences": True,
    "auto_vae_precision_bfloat16": False,
    "auto_vae_precision": True,
    "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    # img2img
    "inpainting_mask_weight": 1.0,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "img2img_color_correction": False,
    "img2img_background_color": "#ffffff",
    "img2img_editor_height": 720,
    "img2img_sketch_default_brush_color": "#ffffff",
    "img2img_inpaint_mask_brush_color": "#ffffff",
    "img2img_inpaint_sketch_default_brush_color": "#ffffff",
    "return_mask": False,
    "return_mask_composite": False,
    "img2img_batch_show_results_limit": 32,
    "overlay_inpaint": True,
    # Optimizations
    "cross_attention_optimization": "Automatic",
    "s_min_uncond_all": False,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "persistent_cond_cache": True,
    "batch_cond_uncond": True,
    "fp8_storage": "Disable",
    "cache_fp16_weight": False,
    # Compatibility
    "auto_backcompat": True,
    "use_old_emphasis_implementation": False,
    "use_old_karras_scheduler_sigmas": False,
    "no_dpmpp_sde_batch_determinism": False,
    "use_old_hires_fix_width_height": False,
    "hires_fix_use_firstpass_conds": False,
    "use_old_scheduling": False,
    "use_downcasted_alpha_bar": False,
    "lora_functional": False,
    # Interrogate
    "interrogate_keep_models_in_memory": False,
    "interrogate_return_ranks": False,
    "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500,
    "interrogate_clip_skip_categories": [],
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True,
    "deepbooru_escape": True,
    "deepbooru_filter_tags": "",
    # Extra Networks (with the built-in Lora extension's)
    "extra_networks_show_hidden_directories": True,
    "extra_networks_dir_button_function": False,
    "extra_networks_hidden_models": "When searched",
    "extra_networks_default_multiplier": 1.0,
    "extra_networks_card_width": 0,
    "extra_networks_card_height": 0,
    "extra_networks_card_text_scale": 1.0,
    "extra_networks_card_show_desc": True,
    "extra_networks_card_description_is_html": False,
    "extra_networks_card_order_field": "Path",
    "extra_networks_card_order": "Ascending",
    "extra_networks_tree_view_style": "Dirs",
    "extra_networks_tree_view_default_enabled": True,
    "extra_networks_tree_view_default_width": 180,
    "extra_networks_add_text_separator": " ",
    "ui_extra_networks_tab_reorder": "",
    "textual_inversion_print_at_load": False,
    "textual_inversion_add_hashes_to_infotext": True,
    "sd_hypernetwork": "None",
    "sd_lora": "None",
    "lora_preferred_name": "Alias from file",
    "lora_add_hashes_to_infotext": True,
    "lora_bundled_ti_to_infotext": True,
    "lora_show_all": False,
    "lora_hide_unknown_for_versions": [],
    "lora_in_memory_limit": 0,
    "lora_not_found_warning_console": False,
    "lora_not_found_gradio_warning": False,
    # Prompt editing
    "keyedit_precision_attention": 0.1,
    "keyedit_precision_extra": 0.05,
    "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"],
    "keyedit_move": True,
    "disable_token_counters": False,
    "include_styles_into_token_counters": True,
    # Gallery
    "return_grid": True,
    "do_not_show_images": False,
    "js_modal_lightbox": True,
    "js_modal_lightbox_initially_zoomed": True,
    "js_modal_lightbox_gamepad": False,
    "js_modal_lightbox_gamepad_repeat": 250,
    "sd_webui_modal_lightbox_icon_opacity": 1,
    "sd_webui_modal_lightbox_toolbar_opacity": 0.9,
    "gallery_height": "",
    "open_dir_button_choice": "Subdirectory",
    # UI alternatives
    "compact_prompt_box": False,
    "samplers_in_dropdown": True,
    "dimensions_and_batch_together": True,
    "sd_checkpoint_dropdown_use_short": False,
    "hires_fix_show_sampler": False,
    "hires_fix_show_prompts": False,
    "txt2img_settings_accordion": False,
    "img2img_settings_accordion": False,
    "interrupt_after_current": True,
    # User interface
    "localization": "None",
    "quicksettings_list": ["sd_model_checkpoint"],
    "ui_tab_order": [],
    "hidden_tabs": [],
    "ui_reorder_list": [],
    "gradio_theme": "Default",
    "gradio_themes_cache": True,
    "show_progress_in_title": True,
    "send_seed": True,
    "send_size": True,
    "enable_reloading_ui_scripts": False,
    # Infotext
    "enable_pnginfo": True,
    "save_txt": False,
    "add_model_name_to_info": True,
    "add_model_hash_to_info": True,
    "add_vae_name_to_info": True,
    "add_vae_hash_to_info": True,
    "add_user_name_to_info": False,
    "add_version_to_infotext": True,
    "disable_weights_auto_swap": True,
    "infotext_skip_pasting": [],
    "infotext_styles": "Apply if any",
    # Live previews
    "show_progressbar": True,
    "live_previews_enable": True,
    "live_previews_image_format": "png",
    "show_progress_grid": True,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "live_preview_allow_lowvram_full": False,
    "live_preview_content": "Prompt",
    "live_preview_refresh_period": 1000,
    "live_preview_fast_interrupt": False,
    "js_live_preview_in_modal_lightbox": False,
    "prevent_screen_sleep_during_generation": True,
    # Sampler parameters
    "hide_samplers": [],
    "ddim_discretize": "uniform",
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default",
    "skip_early_cond": 0.0,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    # Postprocessing
    "postprocessing_enable_in_main_ui": [],
    "postprocessing_disable_in_extras": [],
    "postprocessing_operation_order": [],
    "upscaling_max_images_in_cache": 5,
    "postprocessing_existing_caption_action": "Ignore",
    # Hidden options
    "disabled_extensions": [],
    "disable_all_extensions": "none",
    "restore_config_state_file": "",
    # Built-in extensions: canvas zoom, extra options, Hypertile, SwinIR, LDSR
    "canvas_hotkey_zoom": "Alt",
    "canvas_hotkey_adjust": "Ctrl",
    "canvas_hotkey_shrink_brush": "Q",
    "canvas_hotkey_grow_brush": "W",
    "canvas_hotkey_move": "F",
    "canvas_hotkey_fullscreen": "S",
    "canvas_hotkey_reset": "R",
    "canvas_hotkey_overlap": "O",
    "canvas_show_tooltip": True,
    "canvas_auto_expand": True,
    "canvas_blur_prompt": False,
    "canvas_disabled_functions": ["Overlap"],
    "extra_options_txt2img": [],
    "extra_options_img2img": [],
    "extra_options_cols": 1,
    "extra_options_accordion": False,
    "hypertile_enable_unet": False,
    "hypertile_enable_unet_secondpass": False,
    "hypertile_max_depth_unet": 3,
    "hypertile_max_tile_unet": 256,
    "hypertile_swap_size_unet": 3,
    "hypertile_enable_vae": False,
    "hypertile_max_depth_vae": 3,
    "hypertile_max_tile_vae": 128,
    "hypertile_swap_size_vae": 3,
    "SWIN_tile": 192,
    "SWIN_tile_overlap": 8,
    "SWIN_torch_compile": False,
    "ldsr_steps": 100,
    "ldsr_cached": False,
    # ControlNet (the sd-webui-controlnet extension)
    "control_net_unit_count": 3,
    "control_net_model_cache_size": 2,
    "control_net_inpaint_blur_sigma": 7,
    "control_net_detectmap_autosaving": False,
    "control_net_allow_script_control": False,
    "control_net_sync_field_args": True,
    "controlnet_show_batch_images_in_ui": False,
    "controlnet_increment_seed_during_batch": False,
}

_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
_StoredOptions = create_model("StoredOptions", __config__=_CONFIG,
                              **{name: (Any, default) for name, default in UI_OPTIONS.items()})


class Options(_StoredOptions):
    """Every A1111 option: UI_OPTIONS's stored as given, and below, typed and checked, those that change
    generations or will ("not used yet": read by work in progress)."""

    model_config = _CONFIG

    # Stable Diffusion
    sd_model_checkpoint: str = Field("", description="checkpoint title, name or short hash")
    sd_checkpoint_hash: str = Field("", description="the loaded checkpoint's sha256 (READ_ONLY)")
    CLIP_stop_at_last_layers: int = Field(1, ge=1, description="clip skip: at most the text encoder's layer count")
    randn_source: Literal["GPU", "CPU", "NV"] = Field("GPU", description="not used: noise is drawn on the CPU")
    hires_fix_refiner_pass: Literal["first pass", "second pass", "both passes"] = Field(
        "second pass", description="the hires pass(es) the refiner runs in (not used yet)")
    refiner_switch_by_sample_steps: bool = Field(False, description="switch to the refiner by steps, not sigmas "
                                                                    "(not used yet)")
    # Stable Diffusion XL (not used yet)
    sdxl_crop_top: int = Field(0, ge=0, le=limits.MAX_HIRES_SIDE, description="crops_coords_top_left's top")
    sdxl_crop_left: int = Field(0, ge=0, le=limits.MAX_HIRES_SIDE, description="crops_coords_top_left's left")
    sdxl_refiner_low_aesthetic_score: float = Field(2.5, description="the refiner's negative aesthetic score")
    sdxl_refiner_high_aesthetic_score: float = Field(6.0, description="the refiner's aesthetic score")
    # VAE
    sd_vae: str = Field("Automatic", description="VAE file name in VAE/, 'Automatic' or 'None' (the checkpoint's)")
    # img2img
    img2img_fix_steps: bool = Field(False, description="img2img runs exactly `steps` steps")
    # Sampler parameters: the defaults of the request fields of the same name (eta: by sampler)
    eta_ddim: float = Field(0.0, ge=0, le=1, description="eta of DDIM")
    eta_ancestral: float = Field(1.0, ge=0, le=1, description="eta of the ancestral and SDE samplers")
    s_churn: float = Field(0.0, ge=0, description="sigma churn (Euler, Heun, DPM2)")
    s_tmin: float = Field(0.0, ge=0, description="sigma tmin (Euler, Heun, DPM2)")
    s_tmax: float = Field(0.0, ge=0, description="sigma tmax (Euler, Heun, DPM2); 0 = infinity")
    s_noise: float = Field(1.0, ge=0, description="sigma noise (Euler, Heun, DPM2, ancestral and SDE samplers)")
    s_min_uncond: float = Field(0.0, ge=0, description="NGMS: below this sigma, every other step skips the "
                                                       "negative prompt")
    eta_noise_seed_delta: int = Field(0, ge=0, le=limits.MAX_SEED_DELTA,
                                      description="added to seeds for samplers' step noise (ENSD)")
    # Saving images
    samples_format: Literal["png", "jpg", "jpeg", "webp"] = Field("png", description="image format of results")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG and WebP quality")
    # Face restoration
    face_restoration: bool = Field(False, description="restore faces when a request leaves restore_faces unset")
    face_restoration_model: Literal["CodeFormer", "GFPGAN"] | None = Field(
        None, description="restore_faces' restorer; null: the first whose weights are present, CodeFormer then GFPGAN")
    code_former_weight: float = Field(0.5, ge=0, le=1, description="CodeFormer's weight for restore_faces (0 = "
                                                                   "the most effect)")
    # ControlNet (not used yet)
    control_net_no_detectmap: bool = Field(False, description="leave the detected maps out of the images")

    def merged(self, overrides: dict | None) -> Options:
        """These options with a request's overrides applied (validated; READ_ONLY ones left as they are)."""
        changes = {key: value for key, value in (overrides or {}).items() if key not in READ_ONLY}
        return Options.model_validate({**self.model_dump(), **changes})
