"""The `seqmem` command line: argument definitions (`build_parser`) and the reading of dotted
overrides (`split_overrides`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seqmem import __version__
from seqmem.analysis.analyze import ANALYSES, DEFAULT_ANALYSES
from seqmem.continual import METHODS, PROTOCOLS
from seqmem.errors import SeqmemError

EPILOG = """examples:
  seqmem run --quick                      the flagship in at most 60 s
  seqmem run                              the flagship (about 10 minutes on 2 cores)
  seqmem train --mixer gru --task n_dms --curriculum multi train.max_epochs=20
  seqmem train --resume RUN_ID            continue an interrupted run
  seqmem train --device cuda train.precision=bf16 --nproc 2   GPU, mixed precision, 2 processes
  seqmem runs                             list runs and their status
  seqmem sweep experiments/sweeps/quick.yaml   a grid of runs; re-run to finish what is missing
  seqmem runs --sweep quick --where 'acc>0.9' --best mixer --format csv
  seqmem analyze RUN_ID                   timescales, tau_net, ablation, perturbation
  seqmem prune RUN_ID --finetune-epochs 2 accuracy against sparsity, tau of pruned units
  seqmem refine-schedule RUN_ID           a schedule refined from a run's gradient norms
  seqmem list mixers                      registered mixers (also: tasks)
  seqmem show-task mqar n_pairs=4         a few examples of a task, decoded, targets marked
  seqmem store check                      the store's index against its run folders
  seqmem config --show train              every train.* key: type, default, help
  seqmem train --mixer "gated_deltanet*3,attention" --task mqar --eval.lengths 128,256
  seqmem continual --method finetune,ewc,replay,hnet --seeds 0,1,2   forgetting on N-parity
  seqmem reproduce --list                 published findings re-measured (also: NAME --quick)

Overrides are dotted keys, e.g. train.lr=3e-4 model.d_model=64 task.N=5 (a leading -- is
optional). Runs live under --root (default runs/, database runs/seqmem.db)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqmem", description="Build, train and dissect sequence models that remember.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"seqmem {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="the flagship: single- vs multi-head curricula on N-parity",
                       description="Train the leaky RNN on N-parity with the single-head and "
                       "the multi-head curriculum side by side (same seed and budget), then "
                       "print a comparison table. Extra arguments are dotted overrides.")
    r.add_argument("config", nargs="?", help="YAML config replacing the flagship defaults")
    r.add_argument("--quick", action="store_true", help="a budget of at most 60 s")
    r.add_argument("--no-analysis", action="store_true",
                   help="skip the analysis and the report after training")
    r.add_argument("--sequential", action="store_true",
                   help="train the two curricula one after the other in this process")
    r.add_argument("--device", help="where it computes: auto (cuda when available, else "
                   "cpu), cpu, cuda, cuda:N or mps (sets train.device)")
    _common(r)

    t = sub.add_parser("train", help="train any mixer on any task under a curriculum",
                       description="Train one run. Extra arguments are dotted overrides of the "
                       "config (e.g. train.lr=3e-4).")
    t.add_argument("config", nargs="?", help="YAML run config (default: the defaults)")
    t.add_argument("--mixer", help="mixer name (see `seqmem list mixers`)")
    t.add_argument("--task", help="task name (see `seqmem list tasks`)")
    t.add_argument("--curriculum", help="single, multi, sliding or none")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    t.add_argument("--nproc", type=int, help="data-parallel processes on this machine (sets "
                   "train.nproc; gloo on the CPU, NCCL on CUDA); torchrun works too")
    t.add_argument("--device", help="where it computes: auto (cuda when available, else "
                   "cpu), cpu, cuda, cuda:N or mps (sets train.device)")
    _common(t)

    cl = sub.add_parser("continual", help="continual learning: a protocol of experiences x "
                        "methods against forgetting", description="Train on a protocol's "
                        "experiences one after another with each method (and seed), evaluate "
                        "every experience after each, and print average accuracy, backward and "
                        "forward transfer (mean ± sd over seeds). Results go to the store; "
                        "`seqmem report RUN_IDS` draws the accuracy matrices. Extra arguments "
                        "are dotted overrides, e.g. steps=500 protocol_options.n_max=8 "
                        "method_options.ewc_lambda=1000.")
    cl.add_argument("config", nargs="?", help="YAML continual config (default: the defaults)")
    cl.add_argument("--protocol", help=f"{', '.join(PROTOCOLS)} (default n_curriculum)")
    cl.add_argument("--setting", help="task (a head per experience) or domain (one head)")
    cl.add_argument("--method", help=f"comma-separated: {', '.join(METHODS)} (default "
                    "finetune)")
    cl.add_argument("--mixer", help="mixer name (default leaky_rnn)")
    cl.add_argument("--seeds", help="comma-separated seeds (default 0)")
    cl.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    cl.add_argument("--device", help="where it computes: auto (cuda when available, else "
                    "cpu), cpu, cuda, cuda:N or mps (sets device)")
    _common(cl)

    sw = sub.add_parser("sweep", help="run a grid of configs, resumable, on Ray or processes",
                        description="Expand a sweep file (YAML, or Python defining SWEEP; see "
                        "seqmem.sweep.spec) into runs identified by their config hash. Done "
                        "runs are skipped, interrupted or failed ones resumed, so re-running a "
                        "sweep finishes only what is missing. Workers that die are recorded "
                        "and retried.")
    sw.add_argument("file", help="sweep file (.yaml or .py)")
    sw.add_argument("--workers", type=int, help="runs at a time (default: the CPU count)")
    sw.add_argument("--backend", default="auto", help="auto (Ray if installed, else "
                    "processes; inline for --workers 1), ray, process or inline")
    sw.add_argument("--address", help="join an existing Ray cluster (ray://host:port or auto)")
    sw.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    sw.add_argument("--device", help="where it computes: auto (cuda when available, else "
                   "cpu), cpu, cuda, cuda:N or mps (sets train.device)")
    _common(sw)

    ru = sub.add_parser("runs", help="list and query runs in the store",
                        description="List runs, newest first. --where filters by fields "
                        "(row, summary, sweep point or dotted config keys), e.g. "
                        "--where 'task=mqar and acc>0.9'.")
    ru.add_argument("--status", help="only runs with this status")
    ru.add_argument("--sweep", help="only the runs of this sweep")
    ru.add_argument("--where", help="conditions joined by 'and': key=value, key>number, ...")
    ru.add_argument("--best", metavar="KEYS", help="only the best run per group of these "
                    "comma-separated keys (e.g. mixer,model.d_model), by --metric")
    ru.add_argument("--metric", default="acc_mean", help="metric for --best (default "
                    "acc_mean; prefix with - to minimise)")
    ru.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ru.add_argument("--format", choices=("table", "json", "csv"), default="table")
    ru.add_argument("--mlflow", metavar="URI", help="export the selected runs to MLflow at "
                    "this tracking URI (runs exported before are skipped)")
    ru.add_argument("--mlflow-experiment", default="seqmem", help="MLflow experiment name "
                    "(default seqmem)")
    ru.add_argument("--root", default="runs", help="store root (default runs/)")

    s = sub.add_parser("show", help="a run's status and summary (--json: the whole record)")
    s.add_argument("run_id", help="a run id or a unique prefix of one")
    s.add_argument("--json", action="store_true", help="the raw record: row, resolved "
                   "config, checkpoints and writer, as JSON")
    s.add_argument("--root", default="runs", help="store root (default runs/)")

    an = sub.add_parser("analyze", help="timescales, tau_net, ablation, perturbation, "
                        "forgetting of a run (by name: pruning, richness, symbolic, lr_law)",
                        description="Analyse a stored run (stage by stage for a run trained "
                        "under an N-curriculum); results go to <run>/analysis.json and "
                        "headline numbers to the store's summary. The default analyses are "
                        "the flagship paper's; the others run when named in --what.")
    an.add_argument("run_id")
    an.add_argument("--what", default=",".join(DEFAULT_ANALYSES),
                    help=f"comma-separated subset of {','.join(ANALYSES)} (default: "
                    f"{','.join(DEFAULT_ANALYSES)}; the others only by name)")
    an.add_argument("--seed", type=int, default=0, help="seed of the probe inputs")
    an.add_argument("--device", default="auto", help="where the models and their probes "
                    "compute: auto (cuda when available, else cpu; the default), cpu, cuda, "
                    "cuda:N or mps")
    an.add_argument("--root", default="runs", help="store root (default runs/)")

    pr = sub.add_parser("prune", help="prune a run: accuracy against sparsity, tau of the "
                        "units removed first", description="Prune the model of a run's last "
                        "curriculum stage at several sparsities (magnitude: the smallest |w| of "
                        "every mixer weight; structured: whole units of an RNN or heads of "
                        "linear attention with every parameter that depends on them), "
                        "optionally fine-tune it with the masks held and retrain the pruned "
                        "mask from scratch; accuracy against sparsity and the tau (and tau_net) "
                        "of the pruned units go to <run>/analysis.json under 'pruning'.")
    pr.add_argument("run_id")
    pr.add_argument("--method", default="magnitude,structured",
                    help="comma-separated: magnitude, structured (default both)")
    pr.add_argument("--sparsities", default="0.1,0.25,0.5,0.75,0.9",
                    help="comma-separated target sparsities in (0, 1): the fraction of weights "
                    "(magnitude) or of units / heads (structured) removed (default "
                    "0.1,0.25,0.5,0.75,0.9)")
    pr.add_argument("--schedule", default="oneshot", help="magnitude pruning: oneshot (all at "
                    "once), zhu_gupta (cubic sparsity ramp, Zhu & Gupta 2017) or narang "
                    "(threshold ramp, Narang et al. 2017) over the first half of fine-tuning "
                    "(default oneshot)")
    pr.add_argument("--finetune-epochs", default="0", metavar="E",
                    help="epochs of training at the last stage with the masks held (default 0)")
    pr.add_argument("--retrain", action="store_true", help="also train each pruned mask from "
                    "a fresh initialisation (Liu et al. 2019)")
    pr.add_argument("--retrain-epochs", default=None, metavar="E", help="epochs of --retrain "
                    "(default: as many as the run took to reach the stage)")
    pr.add_argument("--save", action="store_true", help="save each pruned model as checkpoint "
                    "prune-<method>-s<percent> (weights and masks)")
    pr.add_argument("--seed", default="0", help="seed of the probe inputs and fine-tuning")
    pr.add_argument("--root", default="runs", help="store root (default runs/)")

    rf = sub.add_parser("refine-schedule", help="a learning-rate schedule refined from a "
                        "finished run's gradient norms", description="Refine the schedule of "
                        "a finished run from the gradient norm of each of its updates "
                        "(Defazio et al. 2024: weights 1/||g_t||^2 after a median filter, "
                        "eta_t = w_t * sum of the later weights, normalised to a maximum of "
                        "1) and write it to <run>/refined_schedule.json; train under it with "
                        "train.schedule=refined train.schedule_from=RUN_ID.")
    rf.add_argument("run_id")
    rf.add_argument("--smoothing", type=float, default=0.05, help="median-filter width as a "
                    "fraction of the run's updates (default 0.05; 0: none)")
    rf.add_argument("--root", default="runs", help="store root (default runs/)")

    rp = sub.add_parser("report", help="one self-contained HTML page (and PNGs) for runs",
                        description="Write report.html (figures embedded) and one PNG per "
                        "figure for the given runs, using their analysis where present "
                        "(see seqmem analyze).")
    rp.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    rp.add_argument("--sweep", help="a dashboard of this sweep's runs instead (accuracy vs "
                    "state size and length per mixer, timescales, speed)")
    rp.add_argument("--bench", help="with --sweep: a bench.jsonl from seqmem bench to include")
    rp.add_argument("-o", "--out", default=None, help="output: a .html path (PNGs beside "
                    "it) or a folder (default <root>/report-<first run id>/)")
    rp.add_argument("--root", default="runs", help="store root (default runs/)")

    rr = sub.add_parser("reproduce", help="a published finding re-measured, the paper's "
                        "numbers beside ours", description="Run one reproduction (its sweep "
                        "from experiments/NAME/, resumable like every sweep), print our table "
                        "beside the paper's and the verdict computed from the numbers, and "
                        "write the page <root>/reproduce/NAME/index.html with its figures. Dotted "
                        "overrides after NAME (train.max_time_s=60) apply to every run, and "
                        "the verdict then names them.")
    rr.add_argument("name", nargs="?", help="the finding (see --list)")
    rr.add_argument("--list", action="store_true", help="the findings: name, title, budget")
    rr.add_argument("--quick", action="store_true", help="the quick form (a few minutes)")
    rr.add_argument("--workers", type=int, help="runs at a time (default 2; 1: the runs "
                    "go one after another in this process)")
    rr.add_argument("--seeds", help="comma-separated seeds replacing the sweep file's, e.g. "
                    "0,1,2 for more seeds (runs already done are kept)")
    _common(rr)

    ls = sub.add_parser("list", help="list registered mixers or tasks")
    ls.add_argument("what", choices=("mixers", "tasks"))

    b = sub.add_parser("bench", help="tokens/s, decode latency and memory of every mixer form",
                       description="Measure forward and forward+backward tokens/s, decode "
                       "latency per token, peak memory and the fraction of the matmul roofline "
                       "for mixers x forms x sequence lengths, beside PyTorch's fused RNN/GRU/"
                       "LSTM, in one process. Writes bench.jsonl, bench.csv, bench.png and "
                       "bench.md (the full run also README.md) to --out. --ops, --chunks, "
                       "--small and --decode run those tables instead (any together); a plain "
                       "`seqmem bench` runs the grid and all four, and saves the chunk lengths.")
    b.add_argument("--quick", action="store_true",
                   help="a small grid (about 12 s on 2 cores)")
    b.add_argument("--mixers", help="comma-separated mixer names (default: all)")
    b.add_argument("--forms", help="comma-separated forms, e.g. chunk,recurrent, or default "
                   "(each mixer's training form only); default: all")
    b.add_argument("--references", help="comma-separated torch references, or none "
                   "(default: torch.nn.RNN,torch.nn.GRU,torch.nn.LSTM)")
    b.add_argument("--lengths", help="comma-separated T (default 256,1024,4096,16384,65536)")
    b.add_argument("--batch", type=int, help="batch size (default 4)")
    b.add_argument("--d-model", type=int, help="model width (default 256)")
    b.add_argument("--repeats", type=int, help="measured runs per point (default 3)")
    b.add_argument("--budget", type=float, help="seconds: a form whose one run is slower "
                   "is not measured at longer T (default 20)")
    b.add_argument("--threads", type=int, help="torch threads (default 1: a busy machine's "
                   "thread pool makes small ops slow and uneven)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    b.add_argument("--device", help="where the grid measures: cpu (the default), auto (cuda "
                   "when available), cuda, cuda:N or mps; the other parts measure on the CPU "
                   "only")
    b.add_argument("--peers", action="store_true",
                   help="seqmem's ops and mixers beside the field's own implementations (HF "
                   "transformers, fla's references, torch.nn RNNs, torch.compile) on the same "
                   "inputs: outputs checked equal, then timed in interleaved rounds (--repeats "
                   "rounds, default 7); writes peers.jsonl/csv/md (pip install 'seqmem[peers]')")
    b.add_argument("--ops", action="store_true",
                   help="the op table: fwd+bwd of every chunked op (gla, the delta rules, ssd, "
                   "linear attention, retention, the selective scans) at b 4, t 2048, h 4, d 64 "
                   "in interleaved rounds: ms, tokens/s, GFLOP/s and the roofline fraction; "
                   "writes ops.jsonl/csv/md")
    b.add_argument("--chunks", action="store_true",
                   help="every chunked op at chunk lengths 16-256 in interleaved rounds, the "
                   "best per op; writes chunks.jsonl/csv/md (--write: also saves the best for "
                   "this machine, where chunk_size=None finds it)")
    b.add_argument("--write", action="store_true",
                   help="with --chunks: save the best chunk lengths for this machine "
                   "($SEQMEM_CHUNK_SIZES, else $XDG_CACHE_HOME/seqmem/chunk_sizes.json); the "
                   "full bench always does")
    b.add_argument("--small", action="store_true",
                   help="training tokens/s of 2-block models of every mixer (batch 64, "
                   "T 64-2048, d_model 64 and 128) beside attention; writes small.jsonl/csv/md")
    b.add_argument("--decode", action="store_true",
                   help="one-token step latency of every mixer and a 2-block model at batch 1 "
                   "and 64, beside HF's cached Mamba and Gated DeltaNet steps; writes "
                   "decode.jsonl/csv/md")
    b.add_argument("--grid", action="store_true",
                   help="the 2-D mixers' forward + backward time and peak memory at grids 8x8, "
                   "16x16, 32x32 (quick: 8x8, 16x16); writes grid2d.jsonl/csv/md")
    b.add_argument("--compile", action="store_true",
                   help="eager vs torch.compile (train.compile) of a 2-block model's training "
                   "step, one mixer per family (quick: 2 mixers, short): first-call seconds, "
                   "steady tokens/s in interleaved rounds, the speedup; writes "
                   "compile.jsonl/csv/md")
    b.add_argument("--kernels", action="store_true",
                   help="with --device cuda: seqmem's own forms vs the GPU kernels (fla, "
                   "mamba-ssm, causal-conv1d; pip install 'seqmem[gpu]') per mixer, forward + "
                   "backward at T up to 65,536; writes kernels.jsonl/csv/md")
    b.add_argument("--out", help="output folder (default benchmarks/, quick: runs/bench-quick/)")

    cf = sub.add_parser("config", help="every config key of a section: type, default, help",
                        description="Print the dotted keys of a config section with their "
                        "type, default and one line of help: train, eval, curriculum, model, "
                        "run (the top level), or mixer / task (a registered component's "
                        "options; --kind names it, default the default mixer or task).")
    cf.add_argument("--show", required=True, metavar="SECTION",
                    help="train, eval, curriculum, model, run, mixer or task")
    cf.add_argument("--kind", help="with --show mixer|task: which one (e.g. gru, mqar)")

    sto = sub.add_parser("store", help="check the run store's index, or rebuild it from the "
                         "run folders", description="check: compare the SQLite index with the "
                         "run folders (rows without a folder, folders without a row, config "
                         "hashes, statuses, unreadable files). rebuild: make the index again "
                         "from the run folders, which are the source of truth (the old "
                         "database is kept beside it as seqmem.db.bak-<time>).")
    sto.add_argument("action", choices=("check", "rebuild"))
    sto.add_argument("--root", default="runs", help="store root (default runs/)")

    st = sub.add_parser("show-task", help="print a few examples of a task, decoded to text",
                        description="Build a task (extra arguments are its options, e.g. "
                        "n_pairs=4 or task.n_pairs=4), draw a batch and print examples with "
                        "the supervised targets marked, so you see what a model is asked.")
    st.add_argument("task", help="task name (see `seqmem list tasks`)")
    st.add_argument("-n", "--examples", type=int, default=3, help="examples (default 3)")
    st.add_argument("--seed", type=int, default=0, help="seed of the batch (default 0)")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs", help="store root (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")


def join_dotted(argv: list[str]) -> list[str]:
    """`--eval.lengths 64,128` -> `eval.lengths=64,128`: a dotted key typed as a flag takes the
    next word as its value (before argparse, which would read that word as the config file)."""
    out, argv = [], list(argv)
    while argv:
        a = argv.pop(0)
        if a.startswith("--") and "=" not in a and "." in a[2:] and argv \
                and not argv[0].startswith("-"):
            a = f"{a[2:]}={argv.pop(0)}"
        out.append(a)
    return out


def split_overrides(extra: list[str]) -> list[str]:
    """The dotted overrides among the words argparse did not read (a leading -- dropped);
    anything else is a one-line error."""
    out = []
    for a in join_dotted(extra):
        if "=" not in a or (a.startswith("-") and not a.startswith("--")):
            hint = (f"override {a!r} has no value" if "." in a and not a.startswith("-")
                    else f"unrecognised argument {a!r}")
            raise SeqmemError(f"{hint}; overrides look like train.lr=3e-4 (see seqmem --help)")
        out.append(a.removeprefix("--"))
    return out


CONFIG_SUFFIXES = (".yaml", ".yml", ".py")


def check_config_argument(config: str | None) -> None:
    """A positional argument that is no file but looks like a dotted key is an override typed
    without its value: say so, instead of "config file not found"."""
    if not config or "=" in config or Path(config).exists():
        return
    if "." in config and "/" not in config and not config.endswith(CONFIG_SUFFIXES):
        raise SeqmemError(f"override {config!r} has no value; overrides look like "
                          f"train.lr=3e-4 (a config file ends in .yaml)")
