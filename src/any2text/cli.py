"""`any2text` command line: one entry point, one subcommand per job, each delegating to its module's `main(argv)`."""

import importlib
import logging
import sys

# subcommand -> (module, function, one-line help). Modules import lazily so `any2text --help` is instant.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("any2text.builders.cli", "main", "compose a checkpoint from a text LLM and pretrained encoders"),
    "convert-seed": ("any2text.builders.seed", "main", "convert a seed (align-anything) checkpoint"),
    "train": ("any2text.training.train", "main", "train (stage 1 / stage 2, LoRA, DeepSpeed) on the Trainer"),
    "dpo": ("any2text.training.dpo", "main", "align (stage 3: DPO on image / audio / mixed preference pairs)"),
    "reward": ("any2text.training.reward", "main", "train a reward model (a score head) on preference pairs"),
    "grpo": ("any2text.training.grpo", "main", "align on-policy (GRPO: completions sampled, scored by rewards)"),
    "merge-lora": ("any2text.training.merge", "merge_lora_main", "merge a LoRA stage-2 output into a checkpoint"),
    "eval": ("any2text.evaluation.evaluate", "main", "score a checkpoint on a benchmark (generation or pairs)"),
    "chat": ("any2text.evaluation.chat", "main", "chat about images and audio clips (terminal, or a web page: --web)"),
    "demo-data": ("any2text.demo.synthetic", "main", "write the synthetic image/audio question dataset"),
    "demo": ("any2text.demo", "main", "the whole recipe on tiny models, offline, in minutes"),
}


def setup_logging(training_args=None) -> None:
    """Log set-up for every `any2text` command; every entry point's `main` calls it (they also run as `python -m`).

    Without `training_args`: any2text's progress messages (INFO) on stdout, transformers' own chatter left at its
    default. With a `TrainingArguments`, as transformers' example scripts do it: info on the main process,
    `--log_level(_replica)` elsewhere, for transformers' loggers and ours alike. Calling it again changes nothing.
    """
    from transformers.utils import logging as hf_logging

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO
    if training_args is not None:
        if training_args.should_log:
            hf_logging.set_verbosity_info()  # the main process' default; `--log_level` overrides it
        level = training_args.get_process_log_level()
        hf_logging.set_verbosity(level)
        hf_logging.enable_default_handler()
        hf_logging.enable_explicit_format()
    logging.getLogger("any2text").setLevel(level)


def _usage() -> str:
    lines = ["usage: any2text <command> [options]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `any2text <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"any2text: unknown command `{command}`.\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[command]
    result = getattr(importlib.import_module(module_name), function)(rest)
    # Commands return an exit code, or a result object (which means success).
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
