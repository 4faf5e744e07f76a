"""Prompt conditioning as A1111 computes it: emphasis weights, 75-token chunks, BREAK, clip skip,
prompt editing and alternation per step, AND sub-prompts, textual-inversion embeddings, over every
text encoder of the model's family (engine/families).

A prompt is parsed and chunked once; each chunk is encoded by each text encoder, and their outputs are
concatenated (SDXL: CLIP-L's 768 + OpenCLIP-bigG's 1280). A prompt becomes a `Conditioning`: for each
AND sub-prompt, its weight and its step schedule of `TextCondition`s (the context and the denoiser's
other per-prompt inputs, e.g. SDXL's pooled embedding and size ids); the negative prompt becomes a
schedule too (AND does not apply to it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from schemas import Options

from ..families import TextEncoderSpec
from .embeddings import Embedding, Embeddings, EmbeddingVector, vectors_at
from .parser import parse_attention, prompt_schedules, split_and

CHUNK_TOKENS = 75  # per chunk, between the BOS and EOS tokens
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # a full chunk moves text after a comma this close to its end to the next chunk
BREAK = ("BREAK", -1)
PLACEHOLDER_ID = 0  # the token id at an embedding vector's position (its token embedding is replaced)

Token = int | EmbeddingVector  # a chunk position: a token id, or an embedding's vector


@dataclass(frozen=True)
class ConditioningParams:
    """What conditioning depends on besides the text: the pass's size and the options that shape it."""

    width: int
    height: int
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    clip_l_skip: bool = False  # sdxl_clip_l_skip: CLIP skip applies to SDXL's CLIP-L
    crop_top: int = 0  # sdxl_crop_top / sdxl_crop_left
    crop_left: int = 0
    aesthetic_score: float = 6.0  # sdxl_refiner_high_aesthetic_score (prompt) / low (negative prompt)
    aesthetic_score_negative: float = 2.5

    @classmethod
    def of(cls, options: Options, width: int, height: int) -> ConditioningParams:
        return cls(width, height, options.CLIP_stop_at_last_layers, options.sdxl_clip_l_skip, options.sdxl_crop_top,
                   options.sdxl_crop_left, options.sdxl_refiner_high_aesthetic_score,
                   options.sdxl_refiner_low_aesthetic_score)


@dataclass(frozen=True)
class TextCondition:
    """One text as the denoiser takes it: the context (1, 77 * chunks, width) and its other per-prompt inputs."""

    context: torch.Tensor
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: text_embeds, time_ids; each (1, ...)


@dataclass
class Schedule:
    """Conditions over sampling: entry i applies up to and including step `ends[i]`."""

    ends: list[int]
    conditions: list[TextCondition]
    textual_inversions: tuple[Embedding, ...] = ()  # the embeddings its prompts use

    def at(self, step: int) -> TextCondition:
        """The condition for a 0-based sampling step, i.e. the 1-based step `step + 1` of the schedule."""
        for end, condition in zip(self.ends, self.conditions):
            if step < end:
                return condition
        return self.conditions[-1]


@dataclass
class Conditioning:
    uncond: Schedule
    conds: list[tuple[float, Schedule]]  # AND sub-prompts with their weights
    empty: Callable[[], torch.Tensor]  # the empty prompt's context, (1, 77, width): padding for shorter contexts

    def at(self, step: int) -> tuple[TextCondition, list[TextCondition]]:
        """(uncond, conds) for a step, contexts padded to the same number of chunks with the empty prompt's."""
        conditions = [self.uncond.at(step)] + [schedule.at(step) for _, schedule in self.conds]
        length = max(c.context.shape[1] for c in conditions)
        padded = [TextCondition(self._pad(c.context, length), c.inputs) for c in conditions]
        return padded[0], padded[1:]

    def _pad(self, tensor: torch.Tensor, length: int) -> torch.Tensor:
        missing = (length - tensor.shape[1]) // CHUNK_LENGTH
        return torch.cat([tensor, self.empty().repeat(1, missing, 1)], dim=1) if missing else tensor

    @property
    def weights(self) -> list[float]:
        return [weight for weight, _ in self.conds]

    @property
    def textual_inversions(self) -> list[Embedding]:
        """The embeddings used, prompt before negative prompt, each once."""
        schedules = [schedule for _, schedule in self.conds] + [self.uncond]
        return list({e.name: e for schedule in schedules for e in schedule.textual_inversions}.values())


class Encoding(NamedTuple):
    context: torch.Tensor  # (1, 77 * chunks, width): the text encoders' outputs side by side
    pooled: torch.Tensor | None  # (1, projection width) of the first chunk, from the encoder that pools (SDXL)
    textual_inversions: tuple[Embedding, ...]  # the embeddings the text uses, in order


CACHED_ENCODINGS = 64  # recent (text, clip skip, adapters) encodings kept: repeats within and across requests


DenoiserInputs = Callable[[torch.Tensor | None, ConditioningParams, bool], dict[str, torch.Tensor]]


@dataclass
class PromptEncoder:
    """Encodes A1111 prompts with a CLIP tokenizer and the family's text encoders; keeps recent encodings."""

    tokenizer: object
    encoders: list[tuple[TextEncoderSpec, torch.nn.Module]]  # in the order their outputs are concatenated
    embeddings: Embeddings = field(default_factory=Embeddings)
    denoiser_inputs: DenoiserInputs = lambda pooled, params, negative: {}  # the family's, for this model's UNet
    zero_empty_negative: bool = False  # an empty negative prompt conditions as zeros (SDXL)
    adapters: tuple = ()  # the text encoders' active LoRA adapters and weights (prompts/lora.py): in the cache key
    _cache: OrderedDict = field(default_factory=OrderedDict)

    def conditioning(self, prompt: str, negative_prompt: str, steps: int, params: ConditioningParams) -> Conditioning:
        conds = [(weight, self.schedule(text, steps, params)) for text, weight in split_and(prompt)]
        return Conditioning(self.schedule(negative_prompt, steps, params, negative=True), conds,
                            lambda: self.encode("", params))

    def schedule(self, prompt: str, steps: int, params: ConditioningParams, negative: bool = False) -> Schedule:
        entries = prompt_schedules(prompt, steps)
        if negative and self.zero_empty_negative and all(text == "" for _, text in entries):
            return Schedule([steps], [self._zeros(params)])
        encodings = [self.encoding(text, params) for _, text in entries]
        conditions = [TextCondition(e.context, self.denoiser_inputs(e.pooled, params, negative)) for e in encodings]
        used = {e.name: e for encoding in encodings for e in encoding.textual_inversions}
        return Schedule([end for end, _ in entries], conditions, tuple(used.values()))

    def _zeros(self, params: ConditioningParams) -> TextCondition:
        """An empty negative prompt as SDXL's conditioner forces it: the text encoders' outputs are zeros (nothing
        is encoded), the size ids stay."""
        encoder = self.encoders[0][1]
        width = sum(encoder.config.hidden_size for _, encoder in self.encoders)
        context = torch.zeros(1, CHUNK_LENGTH, width, device=encoder.device, dtype=encoder.dtype)
        pooled = next((torch.zeros(1, encoder.config.projection_dim, device=encoder.device, dtype=encoder.dtype)
                       for spec, encoder in self.encoders if spec.pooled), None)
        return TextCondition(context, self.denoiser_inputs(pooled, params, True))

    def encode(self, text: str, params: ConditioningParams | None = None) -> torch.Tensor:
        """(1, 77 * chunks, width): each 75-token chunk encoded on its own, weighted, then concatenated."""
        return self.encoding(text, params).context

    @torch.inference_mode()
    def encoding(self, text: str, params: ConditioningParams | None = None) -> Encoding:
        clip_skip, clip_l_skip = (params.clip_skip, params.clip_l_skip) if params else (1, False)
        key = (text, clip_skip, clip_l_skip, self.embeddings.version, self.adapters)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            chunks = self.chunks(text)
            encoded = [self._encode_chunk(tokens, weights, clip_skip, clip_l_skip) for tokens, weights in chunks]
            used = {t.embedding.name: t.embedding for tokens, _ in chunks for t in tokens
                    if isinstance(t, EmbeddingVector)}
            self._cache[key] = Encoding(torch.cat([context for context, _ in encoded], dim=1), encoded[0][1],
                                        tuple(used.values()))
            if len(self._cache) > CACHED_ENCODINGS:
                self._cache.popitem(last=False)
        return self._cache[key]

    @property
    def layer_count(self) -> int:
        """The first text encoder's transformer layers: the deepest clip skip it allows."""
        return self.encoders[0][1].config.num_hidden_layers

    @property
    def embedding_width(self) -> int:
        """The width an embedding's vectors must have: the text encoders' token embedding widths together."""
        return sum(encoder.get_input_embeddings().embedding_dim for _, encoder in self.encoders)

    @property
    def embedding_keys(self) -> tuple[str | None, ...]:
        return tuple(spec.embedding_key for spec, _ in self.encoders)

    def chunks(self, text: str) -> list[tuple[list[Token], list[float]]]:
        """Token ids (or embedding vectors) and weights per chunk, each padded to 77 with BOS/EOS."""
        fragments = parse_attention(text)
        embeddings = self.embeddings.lookup(self.tokenizer, self.embedding_width, self.embedding_keys)
        tokenized = self.tokenizer([t for t, w in fragments], add_special_tokens=False, truncation=False,
                                   verbose=False).input_ids
        comma = self.tokenizer.convert_tokens_to_ids(",</w>")
        chunks: list[tuple[list[Token], list[float]]] = []
        tokens: list[Token] = []
        weights: list[float] = []
        last_comma = -1

        def close_chunk():
            nonlocal tokens, weights, last_comma
            chunks.append(self._pad(tokens, weights))
            tokens, weights, last_comma = [], [], -1

        for (fragment, weight), ids in zip(fragments, tokenized):
            if (fragment, weight) == BREAK:
                close_chunk()
                continue
            position = 0
            while position < len(ids):
                token = ids[position]
                if token == comma:
                    last_comma = len(tokens)
                elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                    split = last_comma + 1
                    moved = tokens[split:], weights[split:]
                    tokens, weights = tokens[:split], weights[:split]
                    close_chunk()
                    tokens, weights = list(moved[0]), list(moved[1])
                if len(tokens) == CHUNK_TOKENS:
                    close_chunk()
                found = embeddings.find(ids, position)
                if found is None:
                    tokens.append(token)
                    weights.append(weight)
                    position += 1
                    continue
                embedding, name_length = found
                if len(tokens) + len(embedding) > CHUNK_TOKENS:  # an embedding's vectors stay in one chunk
                    close_chunk()
                tokens += [EmbeddingVector(embedding, i) for i in range(len(embedding))]
                weights += [weight] * len(embedding)
                position += name_length
        if tokens or not chunks:
            close_chunk()
        return chunks

    def _pad(self, tokens: list[Token], weights: list[float]) -> tuple[list[Token], list[float]]:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        padding = CHUNK_TOKENS - len(tokens)
        return [bos, *tokens, *[eos] * padding, eos], [1.0, *weights, *[1.0] * padding, 1.0]

    def _encode_chunk(self, tokens: list[Token], weights: list[float], clip_skip: int,
                      clip_l_skip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context, pooled) of one chunk: each encoder's output weighted on its own, side by side."""
        outputs = [self._encode_with(spec, encoder, tokens, weights, clip_skip, clip_l_skip)
                   for spec, encoder in self.encoders]
        pooled = next((pooled for pooled in (p for _, p in outputs) if pooled is not None), None)
        return torch.cat([hidden for hidden, _ in outputs], dim=-1), pooled

    def _encode_with(self, spec: TextEncoderSpec, encoder: torch.nn.Module, tokens: list[Token], weights: list[float],
                     clip_skip: int, clip_l_skip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A1111's "Original" emphasis: scale each token's vector by its weight, keep the chunk's mean.
        Embedding vectors replace the token embeddings at their positions."""
        device = encoder.device
        ids = [t if isinstance(t, int) else PLACEHOLDER_ID for t in tokens]
        if spec.pad_with_zero:  # OpenCLIP pads after the first end token with 0
            end = ids.index(self.tokenizer.eos_token_id, 1)
            ids = ids[:end + 1] + [0] * (len(ids) - end - 1)
        vectors = {i: t.embedding.part(spec.embedding_key)[t.index] for i, t in enumerate(tokens)
                   if isinstance(t, EmbeddingVector)}
        with vectors_at(encoder.get_input_embeddings(), vectors):
            output = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
        hidden = _hidden_state(spec, encoder, output, clip_skip, clip_l_skip)
        pooled = output.text_embeds if spec.pooled else None
        if all(w == 1.0 for w in weights):
            return hidden, pooled
        scale = torch.tensor(weights, device=device, dtype=hidden.dtype).reshape(1, -1, 1)
        original_mean = hidden.mean()
        weighted = hidden * scale
        return weighted * (original_mean / weighted.mean()), pooled


def _hidden_state(spec: TextEncoderSpec, encoder: torch.nn.Module, output, clip_skip: int,
                  clip_l_skip: bool) -> torch.Tensor:
    """The layer A1111 takes: SD 1.x the output, or with CLIP skip the hidden state clip_skip layers from the end
    through the final norm; SDXL the penultimate hidden state, or with sdxl_clip_l_skip CLIP-L's hidden state
    clip_skip layers from the end (without the norm)."""
    if spec.clip_skip_option == "":
        if clip_skip > 1:
            return _final_layer_norm(encoder)(output.hidden_states[-clip_skip])
        return output.last_hidden_state
    if spec.clip_skip_option is not None and clip_l_skip:
        return output.hidden_states[-clip_skip]
    return output.hidden_states[-2] if spec.penultimate else output.last_hidden_state


def _final_layer_norm(text_encoder: torch.nn.Module) -> torch.nn.Module:
    model = getattr(text_encoder, "text_model", text_encoder)  # transformers >= 5.6 flattened CLIPTextModel
    return model.final_layer_norm
