"""Every command in the README runs as written on a fresh clone.

The commands are read from the README's ``bash`` blocks. Each recipe answers ``--help``; every recipe command's
arguments parse (unknown keys, wrong types and missing files fail here); ``train_nli.py`` runs once per CPU
config and launcher, cut to ``--max_steps 2 --eval_on_start false`` and evaluated on 100 real STS-B dev and test
pairs; the evaluation and export commands then run on that run's model; GPU configs are parsed and their local
paths checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ese_trainer.config.parsing import parse_config

from .conftest import REPO, small_sts_args

README = REPO / "README.md"
BIN = Path(sys.executable).parent
CHEAP_RUN = ["--max_steps", "2", "--eval_on_start", "false"]


@dataclass
class Command:
    """One README command: the launcher's options, the recipe and its arguments."""

    line: str
    words: list[str]
    recipe: str | None = None
    launch_options: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def option(self, name: str) -> str | None:
        return next((b for a, b in zip(self.arguments, self.arguments[1:]) if a == name), None)


def readme_commands() -> list[Command]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # VAR=value prefixes
            if not words:
                continue
            command = Command(line.strip(), words)
            if words[0] == "python" and len(words) > 1 and words[1].startswith("recipes/"):
                command.recipe, command.arguments = words[1], words[2:]
            elif words[:2] == ["accelerate", "launch"]:
                position = next(i for i, word in enumerate(words) if re.fullmatch(r"recipes/\w+\.py", word))
                command.launch_options, command.recipe = words[2:position], words[position]
                command.arguments = words[position + 1:]
            commands.append(command)
    return commands


COMMANDS = readme_commands()
RECIPES = sorted({command.recipe for command in COMMANDS if command.recipe})


def load_recipe(path: str):
    """The recipe script as a module (registered, so that its dataclasses resolve their annotations)."""
    name = f"readme_recipe_{Path(path).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def config_of(command: Command) -> dict:
    return yaml.safe_load((REPO / command.option("--config")).read_text())


def runs_on_cpu(config: dict) -> bool:
    """A config whose training data is in the repository runs here (CPU, offline); the rest are GPU configs."""
    return (REPO / str(config.get("train_dataset", ""))).exists()


def run(words: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # as a new user: the recipe finds out by itself that the Hub is unreachable
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_commands_are_understood():
    known = [c for c in COMMANDS if c.recipe or c.words[0] in ("make", ".", "source")]
    assert [c.line for c in COMMANDS if c not in known] == []
    assert {"recipes/train_nli.py", "recipes/evaluate_sts.py", "recipes/export_slice.py",
            "recipes/push_to_hub.py"} <= set(RECIPES)
    targets = set(re.findall(r"(?m)^([a-z]+):", (REPO / "Makefile").read_text()))
    assert {c.words[1] for c in COMMANDS if c.words[0] == "make"} <= targets
    for command in COMMANDS:
        if command.recipe:
            assert (REPO / command.recipe).is_file(), command.line
            for option, value in zip(command.launch_options, command.launch_options[1:]):
                if option == "--config_file":
                    assert (REPO / value).is_file(), command.line


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_answers_help(recipe):
    result = run([sys.executable, recipe, "--help"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {recipe} [--config FILE.yaml]")
    assert "unknown key" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.recipe and "--help" not in c.arguments],
                         ids=lambda c: c.line[-80:])
def test_readme_command_arguments_parse_and_name_existing_files(command):
    arguments = list(command.arguments)
    if command.recipe == "recipes/train_nli.py":
        config = config_of(command)
        for key in ("train_dataset", "sts_dev", "sts_data_dir"):
            value = str(config.get(key, ""))
            is_hub = value == "hub" or (value.count("/") == 1 and not value.startswith((".", "/", "data")))
            assert is_hub or (REPO / value).exists(), f"{command.line}: {key} {value} does not exist"
        if not runs_on_cpu(config):
            arguments += ["--bf16", "false"]  # a GPU config: bf16 is refused on a machine without one
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        parse_config(arguments, load_recipe(command.recipe).ARGUMENT_GROUPS)
    finally:
        os.chdir(cwd)


TRAIN_RUNS = {}  # (launch options, config) -> the first README command that trains it on CPU
for _command in COMMANDS:
    if (_command.recipe == "recipes/train_nli.py" and "--help" not in _command.arguments
            and "--resume_from_checkpoint" not in _command.arguments):
        if runs_on_cpu(config_of(_command)):
            TRAIN_RUNS.setdefault((tuple(_command.launch_options), _command.option("--config")), _command)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_sts) -> dict[str, Path]:
    """Each CPU config under each README launcher, as written plus a cheap schedule; output dir by config."""
    outputs = {}
    for (_, config), command in TRAIN_RUNS.items():
        output_dir = tmp_path_factory.mktemp("readme") / Path(config).stem
        result = run([*command.words, *CHEAP_RUN, *small_sts_args(small_sts), "--output_dir", str(output_dir)])
        assert result.returncode == 0, f"{command.line}\n{result.stderr[-3000:]}"
        assert "| before |" in result.stdout and "| after |" in result.stdout, command.line
        outputs.setdefault(yaml.safe_load((REPO / config).read_text())["output_dir"], output_dir)
    return outputs


def test_cpu_configs_train_as_written(trained):
    launchers = {options for options, _ in TRAIN_RUNS}
    assert ("--config_file", "recipes/accelerate_configs/cpu_2proc.yaml") in launchers
    assert {config for _, config in TRAIN_RUNS} >= {"configs/smoke.yaml", "configs/moe_smoke.yaml",
                                                   "configs/ese_smoke.yaml"}
    for output_dir in trained.values():
        assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.recipe in ("recipes/evaluate_sts.py",
                                                                        "recipes/export_slice.py")],
                         ids=lambda c: c.line[-80:])
def test_evaluation_and_export_commands_run_on_the_trained_model(command, trained, small_sts, tmp_path):
    model = command.option("--model_name_or_path")
    assert model in trained, f"{command.line}: no README run writes {model}"
    words = [str(trained[model]) if word == model else word for word in command.words]
    for option in ("--output_dir", "--output_file"):
        if (value := command.option(option)) is not None:
            words[words.index(value)] = str(tmp_path / Path(value).name)
    if command.recipe == "recipes/evaluate_sts.py":
        words += ["--sts_tasks", "STSBenchmark", "--sts_data_dir", str(small_sts), "--time_sentences", "64"]
    result = run(words, timeout=600)
    assert result.returncode == 0, f"{command.line}\n{result.stderr[-3000:]}"
