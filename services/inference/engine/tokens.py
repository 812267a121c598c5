"""The served model's tokenizer, read from its stored files with the `tokenizers` library alone.

Importing transformers costs a new worker about 2 s (a third of its cold start), only to wrap the same
`tokenizers` object. This wrapper gives the same ids and text as transformers' AutoTokenizer (which the
optimizer trains with) for the tokenizers it accepts: a tokenizer.json whose tokenizer_config.json asks for
nothing that transformers would change it with (see `from_files`). The loader falls back to AutoTokenizer
for the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer as Backend

from llmk.errors import FailedPrecondition, InvalidInput

# The tokenizer classes transformers builds straight from tokenizer.json, unchanged
PLAIN_CLASSES = (None, "TokenizersBackend", "PreTrainedTokenizerFast")
# Settings with which transformers rewrites the backend (its post-processor, its special-token splitting)
REWRITING_SETTINGS = ("add_bos_token", "add_eos_token", "split_special_tokens", "add_prefix_space")
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class ServedTokenizer:
    """encode, decode, eos_token_id and apply_chat_template, called as the engines call a transformers one."""

    def __init__(self, backend: Backend, specials: Mapping[str, str], chat_template: str | None = None):
        backend.no_truncation()  # as transformers: a served prompt is never cut silently
        backend.no_padding()
        self.backend, self.chat_template = backend, chat_template
        self.special_tokens = {k: v for k, v in specials.items() if v}
        self.eos_token_id = self._id("eos_token")
        self.bos_token_id = self._id("bos_token")
        self.pad_token_id = self._id("pad_token")
        self._template: Any = None

    def _id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def __len__(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str | list[int]:
        """The conversation rendered as transformers renders it: the same sandboxed Jinja environment, the
        special tokens as variables, keys whose value is None dropped from each message."""
        if not self.chat_template:
            raise FailedPrecondition("this model has no chat template: send a raw prompt")
        import jinja2

        if self._template is None:
            try:
                self._template = compile_template(self.chat_template)
            except jinja2.TemplateSyntaxError as e:
                raise FailedPrecondition(f"the model's chat template does not compile: {e}") from None
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            text = str(
                self._template.render(
                    messages=chat,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **self.special_tokens,
                )
            )
        except jinja2.TemplateError as e:  # raise_exception: the template refuses these messages
            raise InvalidInput(f"the model's chat template refused the messages: {e}") from None
        return self.encode(text, add_special_tokens=False) if tokenize else text


def compile_template(source: str) -> Any:
    """transformers' chat-template environment (utils/chat_template_utils.py): sandboxed, blocks trimmed, loop
    controls, and its tojson, raise_exception and strftime_now."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    if _version(jinja2.__version__) < (3, 1, 6):  # as transformers: a stored template is untrusted code
        raise FailedPrecondition(
            f"chat templates need jinja2 3.1.6 or later (sandbox fixes), not {jinja2.__version__}"
        )
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def from_files(files: Mapping[str, bytes]) -> ServedTokenizer | None:
    """The tokenizer of a model's stored files, or None when transformers would build it otherwise than from
    tokenizer.json as it stands (then only AutoTokenizer is sure to give the optimizer's ids)."""
    if "tokenizer.json" not in files:
        return None
    config = _json(files, "tokenizer_config.json")
    specials = _specials(config, _json(files, "special_tokens_map.json"))
    if specials is None or unsupported(config):
        return None
    backend = Backend.from_buffer(files["tokenizer.json"])
    if any(backend.token_to_id(t) is None for t in [*specials.values(), *_listed_tokens(config)]):
        return None  # transformers would add the missing token to the vocabulary
    if backend.post_processor is None:
        return None  # transformers would write one
    clean_up = config.get("clean_up_tokenization_spaces")
    if clean_up and type(backend.model).__name__ != "BPE":
        return None  # transformers would clean the decoded text up (it skips that for BPE)
    return ServedTokenizer(backend, specials, chat_template(files, config))


def unsupported(config: Mapping[str, Any]) -> bool:
    return config.get("tokenizer_class") not in PLAIN_CLASSES or any(k in config for k in REWRITING_SETTINGS)


def chat_template(files: Mapping[str, bytes], config: Mapping[str, Any]) -> str | None:
    """chat_template.jinja, else the config's template (a string, or named ones: the 'default' one)."""
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode()
    value = config.get("chat_template")
    if isinstance(value, list):
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def _specials(config: Mapping[str, Any], legacy: Mapping[str, Any]) -> dict[str, str] | None:
    """The named special tokens as strings; None when the two files disagree about one."""
    out: dict[str, str] = {}
    for name in SPECIAL_NAMES:
        values = {_content(src.get(name)) for src in (config, legacy)} - {None}
        if len(values) > 1:
            return None
        if values:
            out[name] = str(values.pop())
    return out


def _listed_tokens(config: Mapping[str, Any]) -> list[str]:
    """Tokens the config lists beyond the named ones, each of which transformers adds when missing."""
    listed: list[Any] = []
    for key in ("additional_special_tokens", "extra_special_tokens", "added_tokens_decoder"):
        value = config.get(key) or []
        listed += list(value.values()) if isinstance(value, dict) else list(value)
    return [t for t in map(_content, listed) if t is not None]


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _json(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    if name not in files:
        return {}
    try:
        value = json.loads(files[name])
    except (ValueError, UnicodeDecodeError):
        raise FailedPrecondition(f"the model's {name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise FailedPrecondition(f"the model's {name} is not a JSON object")
    return value
