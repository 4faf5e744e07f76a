"""Prompt conditioning as A1111 computes it: emphasis weights, 75-token chunks, BREAK, clip skip,
prompt editing and alternation per step, AND sub-prompts, textual-inversion embeddings.

A prompt becomes a `Conditioning`: for each AND sub-prompt, its weight and its step schedule of
text-encoder outputs; the negative prompt becomes a schedule too (AND does not apply to it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .embeddings import Embedding, Embeddings, EmbeddingVector, vectors_at
from .parser import parse_attention, prompt_schedules, split_and

CHUNK_TOKENS = 75  # per chunk, between the BOS and EOS tokens
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # a full chunk moves text after a comma this close to its end to the next chunk
BREAK = ("BREAK", -1)
PLACEHOLDER_ID = 0  # the token id at an embedding vector's position (its token embedding is replaced)

Token = int | EmbeddingVector  # a chunk position: a token id, or an embedding's vector


@dataclass
class Schedule:
    """Text-encoder outputs over sampling: entry i applies up to and including step `ends[i]`."""

    ends: list[int]
    embeddings: list[torch.Tensor]  # each (1, 77 * chunks, dim)
    textual_inversions: tuple[Embedding, ...] = ()  # the embeddings its prompts use

    def at(self, step: int) -> torch.Tensor:
        """The embedding for a 0-based sampling step, i.e. the 1-based step `step + 1` of the schedule."""
        for end, embedding in zip(self.ends, self.embeddings):
            if step < end:
                return embedding
        return self.embeddings[-1]


@dataclass
class Conditioning:
    uncond: Schedule
    conds: list[tuple[float, Schedule]]  # AND sub-prompts with their weights
    empty: torch.Tensor  # the empty prompt's encoding, (1, 77, dim): padding for shorter tensors

    def at(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(uncond, conds) for a step, padded to the same number of chunks with the empty prompt."""
        tensors = [self.uncond.at(step)] + [schedule.at(step) for _, schedule in self.conds]
        length = max(t.shape[1] for t in tensors)
        padded = [self._pad(t, length) for t in tensors]
        return padded[0], padded[1:]

    def _pad(self, tensor: torch.Tensor, length: int) -> torch.Tensor:
        missing = (length - tensor.shape[1]) // CHUNK_LENGTH
        return torch.cat([tensor, self.empty.repeat(1, missing, 1)], dim=1) if missing else tensor

    @property
    def weights(self) -> list[float]:
        return [weight for weight, _ in self.conds]

    @property
    def textual_inversions(self) -> list[Embedding]:
        """The embeddings used, prompt before negative prompt, each once."""
        schedules = [schedule for _, schedule in self.conds] + [self.uncond]
        return list({e.name: e for schedule in schedules for e in schedule.textual_inversions}.values())


class Encoding(NamedTuple):
    tensor: torch.Tensor  # (1, 77 * chunks, dim)
    textual_inversions: tuple[Embedding, ...]  # the embeddings the text uses, in order


CACHED_ENCODINGS = 64  # recent (text, clip skip, adapters) encodings kept: repeats within and across requests


@dataclass
class PromptEncoder:
    """Encodes A1111 prompts with a CLIP tokenizer and text encoder; keeps recent encodings."""

    tokenizer: object
    text_encoder: torch.nn.Module
    embeddings: Embeddings = field(default_factory=Embeddings)
    adapters: tuple = ()  # the text encoder's active LoRA adapters and weights (prompts/lora.py): in the cache key
    _cache: OrderedDict = field(default_factory=OrderedDict)

    def conditioning(self, prompt: str, negative_prompt: str, steps: int, clip_skip: int) -> Conditioning:
        conds = [(weight, self.schedule(text, steps, clip_skip)) for text, weight in split_and(prompt)]
        return Conditioning(self.schedule(negative_prompt, steps, clip_skip), conds, self.encode("", clip_skip))

    def schedule(self, prompt: str, steps: int, clip_skip: int) -> Schedule:
        entries = prompt_schedules(prompt, steps)
        encodings = [self.encoding(text, clip_skip) for _, text in entries]
        used = {e.name: e for encoding in encodings for e in encoding.textual_inversions}
        return Schedule([end for end, _ in entries], [e.tensor for e in encodings], tuple(used.values()))

    def encode(self, text: str, clip_skip: int = 1) -> torch.Tensor:
        """(1, 77 * chunks, dim): each 75-token chunk encoded on its own, weighted, then concatenated."""
        return self.encoding(text, clip_skip).tensor

    @torch.inference_mode()
    def encoding(self, text: str, clip_skip: int = 1) -> Encoding:
        key = (text, clip_skip, self.embeddings.version, self.adapters)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            chunks = self.chunks(text)
            tensor = torch.cat([self._encode_chunk(tokens, weights, clip_skip) for tokens, weights in chunks], dim=1)
            used = {t.embedding.name: t.embedding for tokens, _ in chunks for t in tokens
                    if isinstance(t, EmbeddingVector)}
            self._cache[key] = Encoding(tensor, tuple(used.values()))
            if len(self._cache) > CACHED_ENCODINGS:
                self._cache.popitem(last=False)
        return self._cache[key]

    @property
    def layer_count(self) -> int:
        """The text encoder's transformer layers: the deepest clip skip it allows."""
        return self.text_encoder.config.num_hidden_layers

    @property
    def embedding_width(self) -> int:
        """The width of the text encoder's token embeddings, which an embedding's vectors must have."""
        return self.text_encoder.get_input_embeddings().embedding_dim

    def chunks(self, text: str) -> list[tuple[list[Token], list[float]]]:
        """Token ids (or embedding vectors) and weights per chunk, each padded to 77 with BOS/EOS."""
        fragments = parse_attention(text)
        embeddings = self.embeddings.lookup(self.tokenizer, self.embedding_width)
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

    def _encode_chunk(self, tokens: list[Token], weights: list[float], clip_skip: int) -> torch.Tensor:
        """A1111's "Original" emphasis: scale each token's vector by its weight, keep the chunk's mean.
        Embedding vectors replace the token embeddings at their positions."""
        device = self.text_encoder.device
        ids = torch.tensor([[t if isinstance(t, int) else PLACEHOLDER_ID for t in tokens]], device=device)
        vectors = {i: t.tensor for i, t in enumerate(tokens) if isinstance(t, EmbeddingVector)}
        with vectors_at(self.text_encoder.get_input_embeddings(), vectors):
            output = self.text_encoder(ids, output_hidden_states=clip_skip > 1)
        if clip_skip > 1:  # the hidden state clip_skip layers from the end, through the final norm
            hidden = _final_layer_norm(self.text_encoder)(output.hidden_states[-clip_skip])
        else:
            hidden = output.last_hidden_state
        if all(w == 1.0 for w in weights):
            return hidden
        scale = torch.tensor(weights, device=device, dtype=hidden.dtype).reshape(1, -1, 1)
        original_mean = hidden.mean()
        weighted = hidden * scale
        return weighted * (original_mean / weighted.mean())


def _final_layer_norm(text_encoder: torch.nn.Module) -> torch.nn.Module:
    model = getattr(text_encoder, "text_model", text_encoder)  # transformers >= 5.6 flattened CLIPTextModel
    return model.final_layer_norm
