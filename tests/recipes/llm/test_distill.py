"""`llm-distill`'s core on a tiny random 4-layer Llama teacher: students keep evenly spaced
layers with everything else copied, the distillation loss falls, each student's report
stands beside the teacher's, and the recipe registers one version per student (from a hub
teacher or a registered one, full or LoRA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modelfab.llm.models import load_chat_model, tiny_chat_model
from modelfab.recipes.base import run_recipe
from modelfab.recipes.llm.distill import (
    distill,
    distillation_loss,
    kept_layer_indices,
    prune_layers,
)
from modelfab.recipes.llm_distill import Params
from modelfab.recipes.local import LocalContext
from tests.llm_factories import arithmetic, dataset_folder, persona


def distill_params(**overrides: Any) -> dict[str, Any]:
    """llm-distill params for a tiny teacher in seconds."""
    return {
        "student_layers": [2, 1], "loss": "forward_kl", "temperature": 2.0, "alpha": 0.0,
        "teacher_answers": False, "epochs": 2, "lr": 5e-3, "batch_size": 8,
        "max_length": "auto", "val_fraction": 0.2, "seed": 0, "patience": 2, "samples": 2,
        "answer_tokens": 8,
        **overrides,
    }  # fmt: skip


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("teacher") / "t", layers=4, hidden=64, seed=3)


def test_kept_layers_are_evenly_spaced_with_first_and_last() -> None:
    assert kept_layer_indices(4, 2) == [0, 3]
    assert kept_layer_indices(4, 1) == [0]
    assert kept_layer_indices(30, 15) == sorted(set(kept_layer_indices(30, 15)))
    assert kept_layer_indices(30, 15)[0] == 0 and kept_layer_indices(30, 15)[-1] == 29
    assert len(kept_layer_indices(30, 15)) == 15 and kept_layer_indices(5, 3) == [0, 2, 4]
    with pytest.raises(ValueError):
        kept_layer_indices(4, 5)


def test_pruning_copies_the_kept_layers_and_everything_else(teacher_folder: Path) -> None:
    teacher, _ = load_chat_model(teacher_folder)
    student, kept = prune_layers(teacher, 2)
    assert kept == [0, 3] and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for new, old in enumerate(kept):
        for key in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(s[f"model.layers.{new}.{key}"], t[f"model.layers.{old}.{key}"])
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(s[key], t[key])
    s["model.norm.weight"].add_(1.0)  # a copy: training the student leaves the teacher
    assert not torch.equal(s["model.norm.weight"], t["model.norm.weight"])
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in teacher.parameters()
    )


def test_divergences_are_zero_for_equal_logits_and_positive_otherwise() -> None:
    a, b = torch.randn(5, 11), torch.randn(5, 11)
    for kind in ("forward_kl", "jsd"):
        assert float(distillation_loss(a, a, kind=kind, temperature=2.0)) == pytest.approx(
            0, abs=1e-5
        )
        assert float(distillation_loss(a, b, kind=kind, temperature=2.0)) > 0


def test_students_learn_the_teacher_and_report_beside_it(
    teacher_folder: Path, tmp_path: Path
) -> None:
    teacher, tokenizer = load_chat_model(teacher_folder)
    ctx = LocalContext(tmp_path)
    out = distill(
        persona(24) + arithmetic(24), teacher, tokenizer, distill_params(), workdir=tmp_path,
        reporter=ctx, teacher_ref={"hub": "tiny"},
    )  # fmt: skip
    assert [s.layers for s in out.students] == [2, 1]
    assert out.teacher["layers"] == 4 and out.teacher["eval_loss"] > 0
    for student in out.students:
        m = student.metrics
        assert m["eval_kd"] < m["eval_kd_before"]  # the student moved toward the teacher
        assert m["teacher_eval_loss"] == out.teacher["eval_loss"] and m["eval_loss"] > 0
        assert 0 <= m["answer_agreement"] <= 1
        assert m["params"] < m["teacher_params"] and m["generate_tokens_per_s"] > 0
        assert m["teacher_generate_tokens_per_s"] > 0 and m["tokens_trained"] > 0
        contract = json.loads((student.folder / "model.json").read_text())
        assert contract["kind"] == "full"
        assert contract["base_model"] == {"distilled_from": {"hub": "tiny"}}
        loaded, _ = load_chat_model(student.folder)
        assert loaded.config.num_hidden_layers == student.layers


def test_a_student_as_big_as_the_teacher_is_refused(teacher_folder: Path, tmp_path: Path) -> None:
    from modelfab.errors import InvalidRequest

    teacher, tokenizer = load_chat_model(teacher_folder)
    with pytest.raises(InvalidRequest) as caught:
        distill(persona(10), teacher, tokenizer, distill_params(student_layers=[4]),
                workdir=tmp_path, reporter=LocalContext(tmp_path),
                teacher_ref={"hub": "t"})  # fmt: skip
    assert caught.value.param == "params.student_layers"


def test_params_take_one_size_or_several_and_refuse_repeats() -> None:
    assert Params.model_validate({"student_layers": 3}).student_layers == [3]
    assert Params.model_validate({"student_layers": [1, 3]}).student_layers == [3, 1]
    with pytest.raises(ValueError):
        Params.model_validate({"student_layers": [2, 2]})
    with pytest.raises(ValueError):
        Params.model_validate({"teacher": "../x"})
    assert Params.model_validate({"teacher": "bot@prod"}).teacher == "bot@prod"


def _registered_teacher(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file()}


def test_the_recipe_registers_each_student_from_a_registered_teacher(
    teacher_folder: Path, tmp_path: Path
) -> None:
    # A registered full model: the teacher's folder with a model.json, as llm-finetune saves.
    registered = tmp_path / "registered"
    teacher, tokenizer = load_chat_model(teacher_folder)
    from modelfab.llm.models import save_chat_model

    save_chat_model(teacher, tokenizer, registered)
    (registered / "model.json").write_text(json.dumps({"kind": "full", "base_model": {}}))
    data = dataset_folder(tmp_path / "data", persona(20))
    ctx = LocalContext(
        tmp_path / "work", dataset={"name": "persona"}, dataset_path=data,
        models={"mv_teacher": _registered_teacher(registered)},
    )  # fmt: skip
    params = {**distill_params(epochs=1), "teacher": "bot:2", "teacher_version_id": "mv_teacher",
              "model_name": "bot-small"}  # fmt: skip
    result = run_recipe("llm-distill", params, ctx)
    names = [m["name"] for m in ctx.models_registered]
    assert names == ["bot-small-2l", "bot-small-1l"]
    for model in ctx.models_registered:
        assert model["task"] == "chat" and model["parent_version_id"] == "mv_teacher"
        assert model["extra"]["distilled_from"] == {"model": "bot:2", "version_id": "mv_teacher"}
        assert {"model.safetensors", "model.json"} <= {a["name"] for a in model["artifacts"]}
    assert [s["layers"] for s in result["students"]] == [2, 1]
    assert result["tokens_trained"] == sum(s["tokens_trained"] for s in result["students"])
    assert result["teacher"]["layers"] == 4


def test_students_can_learn_on_the_teachers_own_answers(
    teacher_folder: Path, tmp_path: Path
) -> None:
    teacher, tokenizer = load_chat_model(teacher_folder)
    ctx = LocalContext(tmp_path)
    params = distill_params(student_layers=[1], teacher_answers=True, alpha=0.5, epochs=1,
                            loss="jsd")  # fmt: skip
    out = distill(persona(12), teacher, tokenizer, params, workdir=tmp_path, reporter=ctx,
                  teacher_ref={"hub": "tiny"})  # fmt: skip
    answered = [e for e in ctx.events_of("message") if "The teacher answered" in e["message"]]
    assert answered and "answered 10 of 10" in answered[0]["message"]
    assert out.students[0].metrics["tokens_trained"] > 0


class Crash(RuntimeError):
    pass


def test_a_crash_resumes_the_student_from_its_checkpoint(
    teacher_folder: Path, tmp_path: Path
) -> None:
    teacher, tokenizer = load_chat_model(teacher_folder)
    params = distill_params(student_layers=[2], epochs=2)
    ctx = LocalContext(tmp_path)

    def crash_after_first_epoch(item: dict[str, Any]) -> None:
        if item["type"] == "checkpoint":
            raise Crash("the worker died after epoch 1's checkpoint")

    ctx.on_event = crash_after_first_epoch
    data = persona(20)
    with pytest.raises(Crash):
        distill(data, teacher, tokenizer, params, workdir=tmp_path, reporter=ctx,
                teacher_ref={"hub": "t"})  # fmt: skip
    out = distill(data, teacher, tokenizer, params, workdir=tmp_path,
                  reporter=LocalContext(tmp_path), teacher_ref={"hub": "t"})  # fmt: skip
    assert out.students[0].fit.resumed_from_epoch == 1 and out.students[0].fit.epochs_run == 1
