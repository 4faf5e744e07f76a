"""Prompt conditioning as A1111 computes it: emphasis weights, 75-token chunks, BREAK, clip skip,
prompt editing and alternation per step, AND sub-prompts.

A prompt becomes a `Conditioning`: for each AND sub-prompt, its weight and its step schedule of
text-encoder outputs; the negative prompt becomes a schedule too (AND does not apply to it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .prompt_parser import parse_attention, prompt_schedules, split_and

CHUNK_TOKENS = 75  # per chunk, between the BOS and EOS tokens
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # a full chunk moves text after a comma this close to its end to the next chunk
BREAK = ("BREAK", -1)


@dataclass
class Schedule:
    """Text-encoder outputs over sampling: entry i applies up to and including step `ends[i]`."""

    ends: list[int]
    embeddings: list[torch.Tensor]  # each (1, 77 * chunks, dim)

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


CACHED_ENCODINGS = 64  # recent (text, clip skip, adapters) encodings kept: repeats within and across requests


@dataclass
class PromptEncoder:
    """Encodes A1111 prompts with a CLIP tokenizer and text encoder; keeps recent encodings."""

    tokenizer: object
    text_encoder: torch.nn.Module
    adapters: tuple = ()  # the text encoder's active LoRA adapters and weights (engine/lora.py): part of the cache key
    _cache: OrderedDict = field(default_factory=OrderedDict)

    def conditioning(self, prompt: str, negative_prompt: str, steps: int, clip_skip: int) -> Conditioning:
        conds = [(weight, self.schedule(text, steps, clip_skip)) for text, weight in split_and(prompt)]
        return Conditioning(self.schedule(negative_prompt, steps, clip_skip), conds, self.encode("", clip_skip))

    def schedule(self, prompt: str, steps: int, clip_skip: int) -> Schedule:
        entries = prompt_schedules(prompt, steps)
        return Schedule([end for end, _ in entries], [self.encode(text, clip_skip) for _, text in entries])

    @torch.inference_mode()
    def encode(self, text: str, clip_skip: int = 1) -> torch.Tensor:
        """(1, 77 * chunks, dim): each 75-token chunk encoded on its own, weighted, then concatenated."""
        key = (text, clip_skip, self.adapters)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            chunks = [self._encode_chunk(tokens, weights, clip_skip) for tokens, weights in self.chunks(text)]
            self._cache[key] = torch.cat(chunks, dim=1)
            if len(self._cache) > CACHED_ENCODINGS:
                self._cache.popitem(last=False)
        return self._cache[key]

    def chunks(self, text: str) -> list[tuple[list[int], list[float]]]:
        """Token ids and weights per chunk, each padded to 77 with BOS/EOS."""
        fragments = parse_attention(text)
        tokenized = self.tokenizer([t for t, w in fragments], add_special_tokens=False, truncation=False,
                                   verbose=False).input_ids
        comma = self.tokenizer.convert_tokens_to_ids(",</w>")
        chunks: list[tuple[list[int], list[float]]] = []
        tokens: list[int] = []
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
            for token in ids:
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
                tokens.append(token)
                weights.append(weight)
        if tokens or not chunks:
            close_chunk()
        return chunks

    def _pad(self, tokens: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        padding = CHUNK_TOKENS - len(tokens)
        return [bos, *tokens, *[eos] * padding, eos], [1.0, *weights, *[1.0] * padding, 1.0]

    def _encode_chunk(self, tokens: list[int], weights: list[float], clip_skip: int) -> torch.Tensor:
        """A1111's "Original" emphasis: scale each token's vector by its weight, keep the chunk's mean."""
        device = self.text_encoder.device
        ids = torch.tensor([tokens], device=device)
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
