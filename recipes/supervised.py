"""The supervised recipes: each `run_<stage>(cfg)` says only what is particular to its stage (model,
dataset, Stage, what to save and evaluate); the shared path is in recipes/supervised_common.py."""
from __future__ import annotations

import copy
import json
from typing import Any

from minimind.config import preset as model_preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import DPODataset, PretrainDataset, SFTDataset
from minimind.lora import LoRAConfig as LoRAAdapterConfig
from minimind.lora import apply_lora, merge_lora, save_lora
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel

from learner.stages import DistillStage, DPOStage, LMStage, RewardModelStage
from recipes.supervised_common import chat_data, fit, load_init, prepare, result, save_final, skipped_lines_report
from recipes.supervised_config import DistillConfig, DPOConfig, LoRARecipeConfig, PretrainConfig, RewardModelConfig, SFTConfig
from recipes.evaluate import HeldOutCurve, heldout_problems, pair_accuracy, report_eval


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    run = prepare(cfg)
    mcfg = model_preset(cfg.preset, vocab_size=run.tokenizer.vocab_size, dropout=cfg.dropout)
    model = MiniMindForCausalLM(mcfg)
    print(f"[pretrain] {cfg.preset}: {model.num_parameters() / 1e6:.2f}M parameters, vocab {mcfg.vocab_size}")
    data = PretrainDataset(run.data_file("pretrain"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache",
                           per_line=cfg.per_line, report_path=skipped_lines_report(run))
    learner, stats = fit(run, model, LMStage(), data)
    final = save_final(run, learner.model)
    return result(run, learner, stats, final)


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    run = prepare(cfg)
    model = load_init(run, cfg.init)
    data = chat_data(run, SFTDataset, run.data_file("sft"))
    curve = HeldOutCurve(run)
    learner, stats = fit(run, model, LMStage(), data, plot_keys=("loss", "eval_accuracy", "lr", "grad_norm"),
                         evaluate=curve if cfg.eval_n else None)
    final = save_final(run, learner.model)
    return result(run, learner, stats, final,
                  eval=report_eval(run, learner.model, "sft", answered=curve.answer_at(learner.step)))


def run_lora(cfg: LoRARecipeConfig) -> dict[str, Any]:
    run = prepare(cfg)
    model = load_init(run, cfg.init)
    apply_lora(model, LoRAAdapterConfig(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                                         target_modules=cfg.target_modules))
    data = chat_data(run, SFTDataset, run.data_file("sft"))
    learner, stats = fit(run, model, LMStage(), data)
    final = run.run_dir / "final"
    save_lora(learner.model, final / "adapter.safetensors")
    merge_lora(learner.model)
    save_final(run, learner.model, {"lora": {"rank": cfg.rank, "alpha": cfg.alpha, "base": str(cfg.init)}})
    return result(run, learner, stats, final, eval=report_eval(run, learner.model, "lora"))


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    run = prepare(cfg)
    policy = load_init(run, cfg.init)
    ref = copy.deepcopy(policy)
    data = chat_data(run, DPODataset, run.data_file("dpo"))
    stage = DPOStage(beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    learner, stats = fit(run, policy, stage, data, ref_model=ref,
                         plot_keys=("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "lr"))
    final = save_final(run, learner.model)
    return result(run, learner, stats, final, reward_accuracy=stats.get("reward_accuracy"),
                   eval=report_eval(run, learner.model, "dpo"))


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    run = prepare(cfg)
    teacher = load_init(run, cfg.teacher)
    if cfg.init is not None:
        student = load_init(run, cfg.init)
    else:
        student = MiniMindForCausalLM(model_preset(cfg.preset, vocab_size=teacher.config.vocab_size,
                                                   max_position_embeddings=teacher.config.max_position_embeddings))
    print(f"[distill] teacher {teacher.num_parameters() / 1e6:.2f}M -> student {student.num_parameters() / 1e6:.2f}M")
    data = chat_data(run, SFTDataset, run.data_file("sft"))
    stage = DistillStage(alpha=cfg.alpha, temperature=cfg.temperature)
    learner, stats = fit(run, student, stage, data, ref_model=teacher, plot_keys=("loss", "ce", "kl", "lr"))
    final = save_final(run, learner.model, {"teacher": str(cfg.teacher)})
    return result(run, learner, stats, final, eval=report_eval(run, learner.model, "distill"))


def run_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    run = prepare(cfg)
    lm = load_init(run, cfg.init)
    model = MiniMindScoreModel(lm.config).to(run.device)
    model.model.load_state_dict(lm.model.state_dict())   # trunk from the SFT model; the head starts at 0
    del lm
    data = chat_data(run, DPODataset, run.data_file("dpo"))
    learner, stats = fit(run, model, RewardModelStage(), data, plot_keys=("loss", "accuracy", "margin", "lr"))
    final = save_final(run, learner.model, {"init": str(cfg.init)})
    held_out = None
    if cfg.eval_n > 0:
        test_file = sm.write_jsonl(sm.dpo_records(heldout_problems(cfg.eval_n, cfg.seed), cfg.seed),
                                   run.run_dir / "data" / "dpo_test.jsonl")
        held_out = pair_accuracy(learner.model, DPODataset(test_file, run.tokenizer, cfg.seq_len,
                                                           cache_dir=run.run_dir / "cache"))
        (run.run_dir / "eval.json").write_text(json.dumps({"pair_accuracy": held_out}))
        print(f"[reward_model] held-out pair accuracy (chosen scored above rejected): {held_out:.3f}")
    return result(run, learner, stats, final, pair_accuracy=held_out)
