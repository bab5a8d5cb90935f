"""CausalLMFamily: a Hugging Face causal LM (GPT-2, GPT-Neo) as one file that takes prompt
strings and returns the generated ids and text, token for token what `generate` returns.

Original: the tokenizer (left padding, truncated to the context minus max_new_tokens) then
`model.generate(**enc, do_sample=False, num_beams=K, max_new_tokens=N, pad_token_id=eos, ...)
[:, prompt_len:]` and `tokenizer.batch_decode(..., skip_special_tokens=True)`.
Artifact: the tokenizer graph (exportable.text), a greedy or beam-search Loop around one captured
decoder step with the KV cache carried (exportable.decoding), the detokenizer graph. `--inputs ids`
keeps the ids-in, ids-out core (input_ids + attention_mask, left-padded).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from exportable.blocks.causal_lm import CausalLMStep, CausalLMWithPast
from exportable.decoding import DecodingSettings, decoding_loop, start_empty_prompts
from exportable.errors import InputError
from exportable.recipe import TOKENS, Case, Option, TensorSpec, checked_feed, decoded_tokens
from exportable.text.decode_graph import build_decode_graph
from exportable.text.encode_graph import build_text_graph
from exportable.text.plan import plan_from_hf
from exportable.textinput import TEXT

from . import decoder_with_past as with_past
from .text import TextFamily, model_option

DECODERS = ("gpt2", "gpt_neo")
DECODING_OPTIONS = ("num_beams", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size")
INPUTS = Option("inputs", "text: prompt strings in, text out; ids: prompt ids in, generated ids out; past: the "
                "decoder alone, one step with past_key_values.* in and present.* out (Optimum's shape)",
                default="text", choices=("text", "ids", "past"))
EXAMPLE_PAST, EXAMPLE_NEW = 3, 4  # the step is captured at past 3, 4 new tokens: other shapes are proven


def generator_options(default: str) -> tuple[Option, ...]:
    return (model_option("a causal LM folder (save_pretrained of the model and its tokenizer)", default), INPUTS,
            Option("max_new_tokens", "tokens generated at most (baked into the graph)", default=16, type=int),
            Option("min_new_tokens", "EOS is not chosen before this many new tokens", default=0, type=int),
            Option("repetition_penalty", "transformers' repetition penalty (1.0: none)", default=1.0, type=float),
            Option("num_beams", "beam search width (1: greedy)", default=1, type=int),
            Option("no_repeat_ngram_size", "an n-gram of this size occurs once at most, the prompt included (0: off)",
                   default=0, type=int))


class CausalLMFamily(TextFamily):
    original_pipeline = ("transformers AutoModelForCausalLM.generate (greedy or beam search) + batch_decode; "
                         "--inputs past: the model's forward with a DynamicCache past")
    formats = ("onnx",)
    generates_text = True

    def validate_settings(self) -> None:
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("num_beams", 1), ("no_repeat_ngram_size", 0)):
            if self.settings[name] < low:
                raise InputError(f"recipe {self.name!r}: --{name.replace('_', '-')} must be >= {low}")
        if self.settings["min_new_tokens"] > self.settings["max_new_tokens"]:
            raise InputError(f"recipe {self.name!r}: --min-new-tokens exceeds --max-new-tokens")
        if self.settings["repetition_penalty"] <= 0:
            raise InputError(f"recipe {self.name!r}: --repetition-penalty must be > 0")
        self.refuse_decoding_options_without_a_loop()
        super().validate_settings()

    def refuse_decoding_options_without_a_loop(self) -> None:
        """--inputs past has no decoding loop: a decoding option given with it would be silently ignored."""
        if self.settings.get("inputs") != "past":
            return
        defaults = {o.name: o.default for o in self.options}
        given = [n for n in DECODING_OPTIONS if self.settings[n] != defaults[n]]
        if given:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in given)
            raise InputError(f"recipe {self.name!r}: {flags} set the decoding loop, which --inputs past leaves to "
                             "the caller; drop them, or export with --inputs text or ids")

    def check_encoder(self, model_type: str) -> None:
        if model_type not in DECODERS:
            raise InputError(f"--model {self.model_dir}: model type {model_type!r} is not a supported causal LM; "
                             f"supported: {', '.join(DECODERS)}")

    # --- the model -----------------------------------------------------------------------------
    @cached_property
    def lm(self):
        return self.load_model(AutoModelForCausalLM, "causal LM")

    @cached_property
    def tokenizer(self):
        tokenizer = super().tokenizer
        tokenizer.padding_side = "left"  # prompts of different lengths end where generation starts
        tokenizer.truncation_side = "left"  # a prompt over the context keeps its end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @property
    def context(self) -> int:
        config = self.lm.config
        return int(getattr(config, "max_position_embeddings", None) or config.n_positions)

    @property
    def max_length(self) -> int:
        """The longest prompt: the context less the tokens to generate (longer prompts keep their end)."""
        room = self.context - self.settings["max_new_tokens"]
        if room < 1:
            raise InputError(f"--max-new-tokens {self.settings['max_new_tokens']} leaves no room for a prompt in "
                             f"the model's context of {self.context} tokens")
        return room

    @property
    def eos_id(self) -> int:
        eos = self.lm.generation_config.eos_token_id
        if isinstance(eos, list) and len(eos) > 1:  # generate stops at any of them; the graph knows one
            raise InputError(f"--model {self.model_dir}: generation_config has several EOS ids {eos}; only one "
                             "is built into the graph: save the checkpoint with a single eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        return int(eos if eos is not None else self.tokenizer.eos_token_id)

    @property
    def bos_id(self) -> int:
        bos = self.lm.generation_config.bos_token_id
        return int(bos if bos is not None else self.eos_id)

    @property
    def beam_kwargs(self) -> dict:
        """Beam search's settings that the checkpoint's generation_config decides (unset there, generate
        uses 1.0 and False)."""
        penalty, stopping = self.lm.generation_config.length_penalty, self.lm.generation_config.early_stopping
        return {"length_penalty": 1.0 if penalty is None else float(penalty),
                "early_stopping": False if stopping is None else stopping}

    def generate_kwargs(self) -> dict:
        kwargs = {"do_sample": False, "num_beams": self.settings["num_beams"],
                  "max_new_tokens": self.settings["max_new_tokens"], "min_new_tokens": self.settings["min_new_tokens"],
                  "pad_token_id": self.eos_id, "repetition_penalty": self.settings["repetition_penalty"],
                  "no_repeat_ngram_size": self.settings["no_repeat_ngram_size"]}
        return {**kwargs, **self.beam_kwargs} if self.settings["num_beams"] > 1 else kwargs

    @property
    def past_mode(self) -> bool:
        """--inputs past: the decoder step alone (decoder_with_past), no loop, no tokenizer."""
        return self.settings.get("inputs") == "past"

    # --- the cases -----------------------------------------------------------------------------
    def prompt_cases(self) -> list[Case]:
        """Batches of prompts the artifact is proven on (a recipe declares them)."""
        raise NotImplementedError(f"recipe {self.name!r} must define prompt_cases()")

    def validation_cases(self) -> list[Case]:
        """The recipe's prompt cases; with --inputs past each becomes one step on a real cache
        (decoder_with_past.SPLITS in turn: prefill, one new token, three)."""
        cases = self.prompt_cases()
        if not self.past_mode:
            return cases
        steps = []
        for i, case in enumerate(cases):
            ids = self.tokenize(list(case.data))
            input_ids, mask = start_empty_prompts(ids["input_ids"], ids["attention_mask"], self.eos_id, self.bos_id)
            split = with_past.SPLITS[i % len(with_past.SPLITS)]
            steps.append(with_past.step_case(self.lm, case.name, input_ids, mask, split, self.cache_shape()))
        return steps

    def variants_unavailable(self) -> str | None:
        if self.past_mode:  # the variants' transforms quantize the decoding Loop's body, which this file lacks
            return ("the quantized variants are made from the generation artifact; export them with --inputs text "
                    "or ids")
        return None

    def feed(self, case: Case, fmt: str = "onnx") -> dict[str, np.ndarray]:
        if self.past_mode:
            return checked_feed(self.name, case, self.input_specs(fmt))
        return super().feed(case, fmt)

    # --- the original --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not texts:
            return {"input_ids": np.zeros((0, 0), np.int64), "attention_mask": np.zeros((0, 0), np.int64)}
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    def build_original(self):
        if self.past_mode:
            return lambda case: with_past.run_step(self.lm, case.data, self.cache_shape()[0])
        model, kwargs = self.lm, self.generate_kwargs()

        def generate(case: Case) -> dict[str, np.ndarray]:
            ids = case.data if isinstance(case.data, dict) else self.tokenize(list(case.data))
            rows = ids["input_ids"].shape[0]
            if rows == 0:
                new = np.zeros((0, 0), np.int64)
            else:
                input_ids, mask = start_empty_prompts(ids["input_ids"], ids["attention_mask"], self.eos_id, self.bos_id)
                with torch.no_grad():
                    out = model.generate(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                                         **kwargs)
                new = out[:, input_ids.shape[1]:].numpy().astype(np.int64)
            result = {"generated_ids": new}
            if self.text_mode:
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True) if rows else []
                result["generated_text"] = np.array(texts, dtype=object).reshape(rows)
            return result

        return generate

    # --- the artifact --------------------------------------------------------------------------
    def build_wrapper(self, fmt: str = "onnx"):
        return (CausalLMWithPast if self.past_mode else CausalLMStep)(self.lm).eval()

    def cache_shape(self) -> tuple[int, int, int]:
        config = self.lm.config
        heads = int(config.num_attention_heads)
        return int(config.num_hidden_layers), heads, int(config.hidden_size) // heads

    def model_input_specs(self, fmt: str = "onnx"):
        layers, heads, dim = self.cache_shape()
        if self.past_mode:
            return with_past.input_specs(layers, heads, dim)
        past = (layers, "batch", heads, "past", dim)  # fixed sizes: only batch and past are dynamic
        return (TensorSpec("input_ids", "int64", ("batch", "new"), "the new tokens"),
                TensorSpec("attention_mask", "int64", ("batch", "total"), "past + new"),
                TensorSpec("position_ids", "int64", ("batch", "new"), "positions of the new tokens"),
                TensorSpec("past_keys", "float32", past, "[layers, batch, heads, past, head_dim]"),
                TensorSpec("past_values", "float32", past, "as past_keys"))

    def model_output_specs(self, fmt: str = "onnx"):
        layers, heads, dim = self.cache_shape()
        if self.past_mode:
            return with_past.output_specs(layers, heads, dim, int(self.lm.config.vocab_size))
        cache = (layers, "batch", heads, "total", dim)
        return (TensorSpec("logits", "float32", ("batch", "vocab"), "the last position's logits"),
                TensorSpec("present_keys", "float32", cache, "past + new"),
                TensorSpec("present_values", "float32", cache, "past + new"))

    def capture_feed(self, fmt: str = "onnx") -> dict[str, np.ndarray]:
        layers, heads, dim = self.cache_shape()
        rng = np.random.default_rng(0)
        batch, total = 2, EXAMPLE_PAST + EXAMPLE_NEW
        cache = (layers, batch, heads, EXAMPLE_PAST, dim)
        if self.past_mode:  # one array per layer and kind, [batch, heads, past, dim]
            per_layer = {n: rng.standard_normal(cache[1:], dtype=np.float32)
                         for n in with_past.cache_names(layers, "past_key_values")}
            ids = rng.integers(0, len(self.tokenizer), (batch, EXAMPLE_NEW)).astype(np.int64)
            return {"input_ids": ids, "attention_mask": np.ones((batch, total), np.int64),
                    "position_ids": np.tile(np.arange(EXAMPLE_PAST, total, dtype=np.int64), (batch, 1)), **per_layer}
        return {"input_ids": rng.integers(0, len(self.tokenizer), (batch, EXAMPLE_NEW)).astype(np.int64),
                "attention_mask": np.ones((batch, total), np.int64),
                "position_ids": np.tile(np.arange(EXAMPLE_PAST, total, dtype=np.int64), (batch, 1)),
                "past_keys": rng.standard_normal(cache, dtype=np.float32),
                "past_values": rng.standard_normal(cache, dtype=np.float32)}

    def onnx_around(self, model, opset: int):
        if self.past_mode:
            return model
        layers, heads, dim = self.cache_shape()
        beams = self.beam_kwargs if self.settings["num_beams"] > 1 else {}
        return decoding_loop(model, DecodingSettings(
            max_new_tokens=self.settings["max_new_tokens"], eos_id=self.eos_id, pad_id=self.eos_id, layers=layers,
            heads=heads, head_dim=dim, min_new_tokens=self.settings["min_new_tokens"],
            repetition_penalty=self.settings["repetition_penalty"],
            no_repeat_ngram_size=self.settings["no_repeat_ngram_size"], bos_id=self.bos_id,
            num_beams=self.settings["num_beams"], **beams))

    def tokenizer_plan(self):
        return plan_from_hf(self.tokenizer, max_length=self.max_length, source=str(self.tokenizer_dir))

    def onnx_preprocessor(self, opset: int):
        return build_text_graph(self.tokenizer_plan(), opset=opset) if self.text_mode else None

    def onnx_postprocessor(self, opset: int):
        if not self.text_mode:
            return None
        return build_decode_graph(self.tokenizer_plan(), opset=opset, ids_name="generated_ids",
                                  text_name="generated_text",
                                  clean_up_tokenization_spaces=bool(self.tokenizer.clean_up_tokenization_spaces))

    def input_specs(self, fmt: str = "onnx"):
        if self.text_mode:
            return (TEXT,)
        if self.past_mode:
            return self.model_input_specs(fmt)
        return (TensorSpec("input_ids", "int64", ("batch", "prompt"), "prompt ids, left-padded"),
                TensorSpec("attention_mask", "int64", ("batch", "prompt"), "1 for prompt tokens, 0 for padding"))

    def output_specs(self):
        if self.past_mode:
            return self.model_output_specs()
        ids = TensorSpec("generated_ids", "int64", ("batch", "steps"),
                         "new tokens; rows that ended emit the EOS id as padding")
        if not self.text_mode:
            return (ids,)
        return (ids, TensorSpec("generated_text", "string", ("batch",), "batch_decode(ids, skip_special_tokens)"))

    def tolerances(self):
        if self.past_mode:
            return with_past.tolerances(self.cache_shape()[0])
        # exact; a lossy variant (int8, int4) is judged by token agreement, the text through its ids
        return {"generated_ids": TOKENS, "generated_text": decoded_tokens("generated_ids")}

    def preprocessing(self) -> dict:
        if self.past_mode:
            return {"inputs": "past", "position_ids": "cumsum(attention_mask) - 1, 1 on padding",
                    "cache": "past_key_values.{i}.key/value [batch, heads, past, head_dim]"}
        return {**self.text_preprocessing(), "padding": "longest, left", "truncation": "left",
                "generation": self.generate_kwargs()}

    def default_state(self):
        return self.lm.state_dict()

