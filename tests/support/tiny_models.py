"""Tiny random-weight chat models built on the fly: real transformers code paths, milliseconds per token."""
from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello! How can I help you today? Tell me a story about a robot.",
    "AI Hub streams tokens from GPU workers to clients over websockets.",
    "0123456789 + - * / = ( ) [ ] { } < > ; : , . ! ? ' \" def class return import",
] * 20


def build_tiny_chat_model(out_dir: Path, *, seed: int = 0, context_length: int = 4096, hidden_size: int = 64,
                          layers: int = 2) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, saved as safetensors.

    The end-of-turn token's output row is zeroed, so greedy decoding never
    emits it: a greedy completion always runs to max_tokens, which makes
    lengths and finish reasons predictable in tests.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=context_length, tie_word_embeddings=False,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[fast.eos_token_id].zero_()
        # Larger output weights spread the logits, so greedy choices are not near-ties.
        model.lm_head.weight.mul_(20)
    model.generation_config = GenerationConfig(eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast.save_pretrained(out_dir)
    return out_dir


# A Hermes/Qwen-style template that renders tools, tool calls and tool results (the native path).
HERMES_TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SCRIPTED_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def build_scripted_tool_model(out_dir: Path, *, call_text: str = SCRIPTED_CALL,
                              chat_template: str = HERMES_TOOLS_TEMPLATE) -> Path:
    """A real Llama whose answer is always `call_text` and then the end of its turn, whatever the prompt.

    A random model never writes a well-formed tool call, so this one is built as a two-state machine: its
    attention and MLP outputs are zeroed, so each position's logits depend only on its own token; every
    token's embedding points one way and the call's (one added token) the other way; the output rows send
    "any token" to the call token and the call token to end-of-turn. Its chat template renders tools
    (Hermes style), so the hub reads it as native with the hermes parser.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    base = build_tiny_chat_model(out_dir.parent / "tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens([call_text])
    tokenizer.chat_template = chat_template
    call_id, eos_id = tokenizer.convert_tokens_to_ids(call_text), tokenizer.eos_token_id
    model = LlamaForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        generator = torch.Generator().manual_seed(0)
        hidden = model.config.hidden_size
        direction = torch.zeros(hidden)
        direction[0] = 1.0
        embeddings = model.model.embed_tokens.weight
        embeddings.copy_(0.1 * torch.randn(embeddings.shape, generator=generator) + direction)
        embeddings[call_id] = 0.1 * torch.randn(hidden, generator=generator) - direction
        model.lm_head.weight.zero_()
        model.lm_head.weight[call_id] = 10 * direction
        model.lm_head.weight[eos_id] = -10 * direction
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
