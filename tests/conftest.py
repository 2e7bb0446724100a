import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(int(os.environ.get("LORAKIT_THREADS", "1")))


@pytest.fixture(scope="session")
def ci_adapters():
    """Two tiny real adapters (ci profile, few steps), shared by the slow tests."""
    from lorakit.train.encoder import train_adapter

    tasks = ["rt_subjectivity", "election_tweets"]
    return {t: train_adapter(t, "ci", progress=False) for t in tasks}


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """A 2-layer Llama (4 query heads, 2 key/value heads) with the packaged WordPiece tokenizer, eos = [SEP]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorakit.data.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = load_tokenizer("minilm")
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id,
                      initializer_range=0.2, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
