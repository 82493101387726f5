"""The repository's shape: the top level shows the design card and the entry scripts, support code lives
in seqrec/, which never imports the top level, and no script imports another script."""
import ast
import re
import shlex
from pathlib import Path

from seqrec.running.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DESIGN_CARD = {"replay_buffer.py", "model.py", "ssl_heads.py", "td_lambda.py", "train_offline.py"}
ENTRY_SCRIPTS = {"train_offline.py", "online_eval.py"}          # the top-level scripts users run
BENCHMARK_SCRIPTS = {"bench.py", "compare.py", "sim_ceiling.py", "rollout_oracle.py", "profile_step.py",
                     "compile_ce.py", "online_differences.py"}


def imported_modules(path: Path, dotted: bool = False) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in the file (functions included);
    `dotted`: the full names (`from benchmarks import bench` counts as benchmarks.bench)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name if dotted else alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module if dotted else node.module.split(".")[0])
            if dotted:
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_top_level_holds_the_design_card_and_at_most_two_more_entry_scripts():
    python = {p.name for p in ROOT.glob("*.py")}
    assert DESIGN_CARD <= python
    extra = python - DESIGN_CARD
    assert len(extra) <= 2 and extra <= ENTRY_SCRIPTS, extra


def test_the_package_never_imports_a_top_level_module():
    top_level = {p.stem for p in ROOT.glob("*.py")}
    for path in sorted((ROOT / "seqrec").rglob("*.py")):
        assert not imported_modules(path) & top_level, f"{path.name} imports {imported_modules(path) & top_level}"


def test_no_script_imports_another_script_and_nothing_imports_an_entry_script():
    scripts = {Path(s).stem for s in ENTRY_SCRIPTS | BENCHMARK_SCRIPTS}
    every_file = [p for p in ROOT.rglob("*.py") if not {".git", "runs"} & set(p.parts) and ROOT / "data" not in p.parents]
    for path in every_file:
        imported = imported_modules(path)
        assert not imported & {Path(s).stem for s in ENTRY_SCRIPTS}, f"{path} imports an entry script"
        if path.name in ENTRY_SCRIPTS | BENCHMARK_SCRIPTS:
            benchmarks = {m.removeprefix("benchmarks.") for m in imported_modules(path, dotted=True)}
            assert not (imported | benchmarks) & scripts, f"the script {path.name} imports {(imported | benchmarks) & scripts}"


def test_nothing_edits_sys_path_benchmarks_are_a_package_run_with_python_m():
    assert (ROOT / "benchmarks" / "__init__.py").is_file()
    for path in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append"):
                raise AssertionError(f"{path.name} edits sys.path")


def test_train_offline_reads_as_a_table_of_contents():
    assert len((ROOT / "train_offline.py").read_text().splitlines()) <= 300


README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """Each command line of the README's bash blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250
    for doc in ("method", "simulator", "results", "speed", "history"):
        assert (ROOT / "docs" / f"{doc}.md").is_file(), doc


def test_no_readme_command_but_the_default_run_trains_into_runs_default():
    """A command that trains (not --resume, not --mode eval/recommend) writes train.run_dir: only the
    plain default run may use runs/default, so the README's --resume line continues that run."""
    default = load_config().train.run_dir
    trains = [c for c in readme_commands() if "train_offline.py" in c and "--mode" not in c and "--resume" not in c]
    assert trains, "no training command found in the README"
    for command in trains:
        words = shlex.split(command)
        path = words[words.index("--config") + 1] if "--config" in words else None
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        run_dir = load_config(ROOT / path if path else None, overrides).train.run_dir
        plain = words[-1] == "train_offline.py" and words[0] in ("python", "pip")
        assert run_dir != default or plain, f"'{command}' would overwrite {default}"


def test_every_readme_link_to_a_file_or_section_exists():
    for target in re.findall(r"\]\(((?:docs|configs|results)/[^)]*)\)", README.read_text()):
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            headings = [h.strip() for h in re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), flags=re.M)]
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, target
