"""The ``siamindex`` command line: parse, call one library function, format, map errors.

TensorFlow is imported inside command bodies only, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from siamindex.blas import summary as blas_summary
from siamindex.defaults import (
    ALIASES,
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_INDEX,
    DEFAULT_MIN_RECALL,
    DEFAULT_OPEN_SET,
    DEFAULT_RULE,
    DEFAULT_SUPPORT,
    INDEX_ENV,
    NEAREST_CLASS_RULE,
    PREPARE_MODES,
    RULES,
    SAMPLERS,
)
from siamindex.errors import BadIndexType, BadSearchSetting, OldSpelling, SiamIndexError

F = TypeVar("F", bound=Callable[..., Any])

# Library errors that are about one option: shown as a usage error (exit 2) naming it.
_OPTION_ERRORS: dict[type[SiamIndexError], str] = {
    BadIndexType: "--index-type",
    BadSearchSetting: "--nprobe/--ef-search",
}


def _deprecated(message: str) -> None:
    """One line on stderr: an old spelling was used, and what to write instead."""
    click.echo(f"Deprecated: {message}", err=True)


def _errors_to_messages(command: F) -> F:
    """Turn library errors into one-line click errors (exit 1), never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OldSpelling)
                try:
                    return command(*args, **kwargs)
                finally:
                    for seen in caught:
                        if issubclass(seen.category, OldSpelling):
                            _deprecated(str(seen.message))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except tuple(_OPTION_ERRORS) as exc:
            raise click.BadParameter(str(exc), param_hint=_OPTION_ERRORS[type(exc)]) from None
        except SiamIndexError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("Interrupted; nothing was left half-written.") from None
        except MemoryError:
            raise click.ClickException(
                "Out of memory; try a smaller --batch-size or fewer images per call."
            ) from None
        except Exception as exc:  # last resort: still one line, with a way to see more
            if os.environ.get("SIAMINDEX_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.ClickException(
                f"Unexpected {type(exc).__name__}: {first[:300]} "
                "(set SIAMINDEX_DEBUG=1 to see the traceback, and please report it)."
            ) from None

    return wrapper  # type: ignore[return-value]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: a readable table, or JSON for programs.",
)
data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    envvar="SIAMINDEX_DATA",
    default=None,
    help="Dataset folder (IDX files or class folders), or mnist-aug:N[:SEED] (N distorted "
    "MNIST train images, generated as needed); default: bundled MNIST. Also read from "
    "SIAMINDEX_DATA.",
)
size_options = [
    click.option(
        "--train-size",
        type=click.IntRange(min=10),
        default=None,
        help="Use only the first N train images (quick runs).",
    ),
    click.option(
        "--test-size",
        type=click.IntRange(min=10),
        default=None,
        help="Use only the first N test images (quick runs).",
    ),
]


def _with_options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """One decorator applying a list of click options, in order."""

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_with_sizes = _with_options(size_options)


engine_options = [
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Where the work runs: in this process, or on a Ray cluster (the 'cluster' extra), "
        "shard by shard (check: with --out).",
    ),
    click.option(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Ray actors, each loading the encoder (and index) once; default: one per CPU.",
    ),
]


_with_engine = _with_options(engine_options)


def _check_engine(engine: str, address: str | None, workers: int | None) -> None:
    """--address and --workers only mean something on Ray."""
    for option, value in (("address", address), ("workers", workers)):
        if value is not None and engine != "ray":
            raise click.UsageError(f"--{option} applies to --engine ray only; add --engine ray.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="siamindex")
@click.option("-v", "--verbose", is_flag=True, help="Log what the library is doing.")
def cli(verbose: bool) -> None:
    """Turn a trained Siamese network into a similarity-search index."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if verbose:
        logging.getLogger("siamindex").setLevel(logging.INFO)


def _one_of(kind: str, choices: Sequence[str]) -> Callable[..., str | None]:
    """A click callback accepting ``choices`` or an old spelling of one (with a notice)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or value in choices:
            return value
        new = ALIASES.get(kind, {}).get(value)
        if new is None:
            listed = ", ".join(f"'{c}'" for c in choices)
            raise click.BadParameter(f"'{value}' is not one of {listed}.")
        _deprecated(f"{kind} '{value}' is now called '{new}'.")
        return new

    return check


@cli.command()
@click.option(
    "--architecture",
    callback=_one_of("architecture", ARCHITECTURES),
    default=None,
    metavar="[" + "|".join(ARCHITECTURES) + "]",
    help="article-mlp is the article's network; cnn (default) is faster and better.",
)
@click.option(
    "--encoder",
    "old_architecture",
    callback=_one_of("architecture", ARCHITECTURES),
    default=None,
    hidden=True,
    help="Deprecated spelling of --architecture (--encoder is always a file now).",
)
@click.option(
    "--sampler",
    callback=_one_of("sampler", SAMPLERS),
    default=None,
    metavar="[" + "|".join(SAMPLERS) + "]",
    help="Pairs: article (one pair per image, the article's), balanced, or in-batch (every "
    "pair in each batch). Default: article for article-mlp, in-batch for cnn.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs (maximum, with early stopping). Default: 20 for the article, 8 otherwise.",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option(
    "--margin",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Contrastive-loss margin.",
)
@click.option(
    "--embedding-dim",
    type=click.IntRange(min=1, max=4096),
    default=None,
    help="Embedding width. Default: 128 for article-mlp, 64 for cnn.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Drives every random choice.")
@click.option(
    "--align/--no-align",
    "align_threshold",
    default=True,
    show_default=True,
    help="Scale the output so the article's 0.5 is the best pair threshold on validation "
    "pairs (never for the article reproduction).",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Vary half of each training batch: pen width, affine, elastic, blur, uneven paper, "
    "ruled lines, noise (siamindex/augment.py). Default: on with --sampler in-batch.",
)
@click.option(
    "--outlier-share",
    type=click.FloatRange(0, 0.5, max_open=True),
    default=None,
    help="Share of each batch that is generated non-digits, pushed beyond the margin from "
    "every class (outlier exposure). Default: 0.2 with --sampler in-batch, else 0.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of the train split held out for validation.",
)
@click.option(
    "--classes",
    "class_spec",
    default=None,
    metavar="NAMES",
    help="Train on these classes only, e.g. 0-5 or 0,2,7 (the others stay unseen, to be "
    "added to an index later with add --new-class). Default: all.",
)
@click.option(
    "--labelled",
    type=click.IntRange(min=10),
    default=None,
    help="Train on N labelled train images drawn evenly over the classes (seeded), the "
    "validation share included; without --epochs, for at least 9,000 steps. Default: all.",
)
@click.option(
    "--head",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="WIDTH",
    help="Train through a projection head (Dense WIDTH, relu, then Dense to the embedding) "
    "that is dropped afterwards, in place of the CNN's hidden dense layer (SimCLR): for an "
    "encoder of classes to be added later with add --new-class, e.g. 128. 0: none.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="models/encoder.keras",
    show_default=True,
    help="Encoder file to write (.keras); the report goes beside it (.json).",
)
@data_option
@_with_sizes
@format_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_errors_to_messages
def train(
    output_format: str,
    quiet: bool,
    out: str,
    architecture: str | None,
    old_architecture: str | None,
    **settings: Any,
) -> None:
    """Train an encoder with contrastive loss and write it with a JSON report."""
    if not out.endswith(".keras"):
        raise click.BadParameter(
            f"'{out}' must end in .keras, e.g. models/encoder.keras.", param_hint="--out"
        )
    if old_architecture is not None:
        if architecture is not None:
            raise click.UsageError("Give --architecture only; --encoder is its old spelling.")
        _deprecated("train --encoder NAME is now --architecture NAME.")
    from siamindex.training import TrainConfig
    from siamindex.training import train as run_training

    class_spec = settings.pop("class_spec")
    if class_spec is not None:
        from siamindex.data import load_dataset, parse_classes

        names = load_dataset(settings["data_dir"], "train").class_names
        settings["classes"] = parse_classes(class_spec, names)
    config = TrainConfig(
        architecture=architecture or old_architecture or DEFAULT_ARCHITECTURE, **settings
    )
    try:
        config = config.resolved()
    except ValueError as exc:  # settings that do not go together
        raise click.UsageError(f"{exc}.") from None
    result = run_training(config, out, progress=not quiet)
    report = result.report
    if output_format == "json":
        click.echo(json.dumps(report, indent=2))
        return
    rows = [
        (split, _number(report["pair_accuracy"][split]), _number(report["roc_auc"][split]))
        for split in ("train", "val", "test")
    ]
    click.echo(_table(rows, ("pairs", "accuracy@0.5", "roc_auc")))
    click.echo(
        f"\n{report['epochs_run']} epochs in {report['train_seconds']:.1f} s; "
        f"wrote {result.path} and {result.report_path}"
    )


@cli.command()
@click.option(
    "--encoder",
    "encoder_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="Encoder file (.keras) written by `siamindex train`.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@data_option
@_with_sizes
@format_option
@_errors_to_messages
def evaluate(
    encoder_path: str,
    seed: int,
    data_dir: str | None,
    train_size: int | None,
    test_size: int | None,
    output_format: str,
) -> None:
    """Measure an encoder on the test split against the train split, beside raw pixels."""
    from siamindex.embedding import load_embedder
    from siamindex.evaluation import evaluate as run_evaluation

    results = run_evaluation(load_embedder(encoder_path), data_dir, seed, train_size, test_size)
    if output_format == "json":
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(_evaluation_table(results))


def _evaluation_table(results: dict[str, Any]) -> str:
    encoder, pixels = results["encoder"], results["raw_pixels"]
    rows = [
        ("pair accuracy @0.5", "pair_accuracy"),
        ("pair ROC AUC", "roc_auc"),
        ("1-NN accuracy", "one_nn_accuracy"),
        ("precision@1", "precision_at_1"),
        ("MAP@R", "map_at_r"),
        ("calibrated threshold", "threshold"),
    ]
    table = [(label, _number(encoder[key]), _number(pixels[key])) for label, key in rows]
    for label, key in (("membership accuracy", "accuracy"), ("membership F1", "f1")):
        table.append(
            (label, _number(encoder["membership"][key]), _number(pixels["membership"][key]))
        )
    sizes = results["sizes"]
    return (
        _table(table, ("measure", "encoder", "raw pixels"))
        + f"\n\n{sizes['queries']} test queries against {sizes['stored']} stored train images."
    )


def _parse_splits(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    splits = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [part for part in splits if part not in ("train", "test")]
    if not splits or unknown or len(set(splits)) != len(splits):
        raise click.BadParameter(
            f"'{value}' must list train and/or test once each, e.g. train,test."
        )
    return splits


index_option = click.option(
    "--index",
    "index_name",
    default=DEFAULT_INDEX,
    show_default=True,
    envvar=INDEX_ENV,
    help=f"Index name (under ./indexes or $SIAMINDEX_INDEXES) or path. Also read from {INDEX_ENV}.",
)
output_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="A readable table, or JSON / CSV for programs.",
)
resize_option = click.option(
    "--resize", is_flag=True, help="Only scale image files to 28x28 (instead of --prepare)."
)
prepare_option = click.option(
    "--prepare",
    type=click.Choice(PREPARE_MODES),
    default="auto",
    show_default=True,
    help="mnist: lay each image out as MNIST did (light ink on black, ink scaled into a 20x20 "
    "box, centred by mass in 28x28); auto: only images that are not 28x28 light-on-dark "
    "already; none: use as given.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")


def _index_named(ctx: click.Context, index_name: str, old: str | None, how: str) -> str:
    """The index to use, from --index or an old spelling of it (with a notice)."""
    if old is None:
        return index_name
    if ctx.get_parameter_source("index_name") == ParameterSource.COMMANDLINE:
        raise click.UsageError(f"Give the index once, with --index; {how} is its old spelling.")
    _deprecated(f"{how} is now --index NAME.")
    return old


@cli.command("build-index")
@index_option
@click.option("--name", "old_name", default=None, hidden=True, help="Old spelling of --index.")
@click.option(
    "--encoder",
    "encoder_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Use this .keras encoder; without it the default encoder is trained first.",
)
@click.option(
    "--splits",
    default="train,test",
    show_default=True,
    callback=_parse_splits,
    help="Which splits to index.",
)
@data_option
@click.option("--resize", is_flag=True, help="Resize class-folder images that are not 28x28.")
@click.option(
    "--index-type",
    default="flat",
    show_default=True,
    help="'flat' (exact) or a FAISS index_factory string such as IVF256,Flat or HNSW32.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Images per encoder call.",
)
@click.option(
    "--target-precision",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Calibrate to the largest threshold with this precision instead of max F1.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--support",
    type=click.IntRange(min=1),
    default=DEFAULT_SUPPORT,
    show_default=True,
    help="A membership claim holds when this many stored members of the class lie within the "
    "threshold (1: the nearest member alone decides).",
)
@click.option(
    "--rule",
    type=click.Choice(RULES),
    default=DEFAULT_RULE,
    show_default=True,
    help="nearest-class: a claim also needs no other class with as many members nearer than "
    "the claimed one (a dense neighbouring class cannot say yes); distance: the threshold alone "
    "decides.",
)
@click.option(
    "--min-recall",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MIN_RECALL,
    show_default=True,
    help="The threshold accepts at least this share of true claims (leave-one-out); 0 for no "
    "floor (max F1 alone: fewer wrong-class claims accepted, fewer true ones too).",
)
@click.option(
    "--open-set",
    type=click.IntRange(min=0),
    default=None,
    help="Generated non-digits calibrated on as false claims, so that the threshold also "
    f"rejects what is no class. Default: {DEFAULT_OPEN_SET} for the bundled MNIST and mnist-aug, "
    "0 for other --data.",
)
@_with_engine
@click.option(
    "--force", is_flag=True, help="Replace an existing index (once the new one is complete)."
)
@format_option
@quiet_option
@click.pass_context
@_errors_to_messages
def build_index(
    ctx: click.Context,
    /,
    index_name: str,
    old_name: str | None,
    encoder_path: str | None,
    output_format: str,
    quiet: bool,
    **settings: Any,
) -> None:
    """Embed a dataset (default: all 70,000 MNIST images) into a FAISS index bundle.

    --data mnist-aug:N indexes N distorted MNIST images, generated shard by shard; with it, or
    with --engine ray, the build streams: no process holds all images or vectors.
    """
    import tempfile

    from siamindex.build import BuildSettings, check_settings
    from siamindex.scale import build as run_build

    _check_engine(settings["engine"], settings["address"], settings["workers"])

    build = BuildSettings(
        encoder="",
        index=_index_named(ctx, index_name, old_name, "build-index --name NAME"),
        progress=not quiet,
        **settings,
    )
    with tempfile.TemporaryDirectory(prefix="siamindex-train-") as scratch:
        if encoder_path is None:
            check_settings(build)  # before minutes of training, not after
            encoder_path = _train_default(Path(scratch), settings["data_dir"], quiet)
        index, phases = run_build(dataclasses.replace(build, encoder=encoder_path))
    facts = {
        **index.info().to_dict(),
        "build_seconds": phases.seconds,
        "build_peak_mb": phases.peak_mb,
    }
    _print_info(facts, output_format)


def _acceptance_lines(facts: dict[str, Any]) -> list[str]:
    """What the calibration accepted and rejected, when the bundle recorded it."""
    if facts.get("true_claims_accepted") is None:
        return []
    line = f"accepts      {facts['true_claims_accepted']:.4f} of calibration true claims"
    if facts.get("open_set_rejected") is not None:
        line += f"; rejects {facts['open_set_rejected']:.4f} of calibration non-digits"
    return [line]


def _train_default(scratch: Path, data_dir: str | None, quiet: bool) -> str:
    """Train the default encoder into ``scratch`` (build-index without --encoder)."""
    from siamindex.training import TrainConfig
    from siamindex.training import train as run_training

    click.echo("No --encoder given: training the default encoder first.", err=True)
    result = run_training(
        TrainConfig(data_dir=data_dir), scratch / "encoder.keras", progress=not quiet
    )
    return str(result.path)


@cli.command()
@index_option
@click.argument("old_name", required=False, metavar="")
@format_option
@click.pass_context
@_errors_to_messages
def info(ctx: click.Context, index_name: str, old_name: str | None, output_format: str) -> None:
    """Show what an index holds: counts, dimension, type, encoder, thresholds, versions."""
    from siamindex.index import Index

    name = _index_named(ctx, index_name, old_name, "info NAME")
    _print_info(Index.open(name).info().to_dict(), output_format)


def _print_info(facts: dict[str, Any], output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(facts, indent=2))
        return
    thresholds = facts["class_thresholds"]
    splits = ", ".join(f"{name} {count}" for name, count in facts["per_split"].items())
    rows = [
        (name, str(count), _number(thresholds.get(name)))
        for name, count in facts["per_class"].items()
    ]
    lines = [
        f"index        {facts['path']} -> {facts['bundle']}",
        f"count        {facts['count']} ({splits})",
        f"vectors      {facts['embedding_dim']}-d, {facts['distance']} distance, "
        f"index type {facts['index_type']}",
        f"threshold    {_number(facts['threshold'])} ({facts['threshold_method']}); a claim needs "
        f"{facts['support']} member(s) within it"
        + (
            ", and no other class with as many nearer"
            if facts.get("rule") == NEAREST_CLASS_RULE
            else ""
        ),
        *_acceptance_lines(facts),
        f"pairs        'same' when distance < {_number(facts['pair_threshold'])} (compare)",
        f"encoder      sha256 {facts['encoder_sha256']}",
        f"dataset      sha256 {facts['dataset_fingerprint']}",
        f"created      {facts['created']}, format {facts['format_version']}, "
        f"{facts['size_bytes'] / 1e6:.1f} MB on disk",
        "versions     " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()),
        f"blas         {blas_summary(facts['blas'])}",
    ]
    for name in facts.get("late_classes", []):
        own = thresholds.get(name)
        lines.append(
            f"late class   {name}: "
            + (
                f"own threshold {_number(own)} (recalibrated on every change)"
                if own is not None
                else "too few members for its own threshold; judged by the global one"
            )
        )
    if "build_seconds" in facts:
        lines.append(
            "build s      "
            + ", ".join(f"{k} {v:.2f}" for k, v in facts["build_seconds"].items())
            + f" (total {sum(facts['build_seconds'].values()):.2f})"
        )
    click.echo("\n".join(lines) + "\n\n" + _table(rows, ("class", "count", "threshold")))


@cli.command()
@click.argument("images", nargs=-1, required=True)
@index_option
@click.option("--class", "class_name", default=None, help="The class of the images.")
@click.option("--label", "old_label", default=None, hidden=True, help="Old spelling of --class.")
@click.option("--new-class", is_flag=True, help="Allow a class the index does not have yet.")
@resize_option
@prepare_option
@format_option
@click.pass_context
@_errors_to_messages
def add(
    ctx: click.Context,
    images: tuple[str, ...],
    index_name: str,
    class_name: str | None,
    old_label: str | None,
    new_class: bool,
    resize: bool,
    prepare: str,
    output_format: str,
) -> None:
    """Add images of one class to an index, without a rebuild. Prints the new ids."""
    from siamindex.index import Index
    from siamindex.inputs import load_images

    if old_label is not None:
        if class_name is not None:
            raise click.UsageError(
                "Give the class once, with --class; --label is its old spelling."
            )
        _deprecated("add --label C is now add --class C.")
        class_name = old_label
    if class_name is None:
        raise click.UsageError("add needs --class C, the class of the images.")
    index_name, images = _old_positional_index(ctx, index_name, images, "add NAME IMAGE...")
    index = Index.open(index_name)
    loaded = load_images(images, resize=resize, prepare=prepare)
    ids = index.add(loaded.pixels, class_name, new_class=new_class)
    from siamindex.curation import added as added_result
    from siamindex.query import to_json

    added = added_result(index.store, str(index.path), class_name, ids)
    if output_format == "json":
        click.echo(json.dumps(to_json(added), indent=2))
        return
    click.echo(f"added {len(ids)} image(s) as class {class_name}: ids {_id_list(ids)}")
    if added.threshold_note:
        click.echo(added.threshold_note)


def _old_positional_index(
    ctx: click.Context, index_name: str, images: tuple[str, ...], how: str
) -> tuple[str, tuple[str, ...]]:
    """Take an old leading positional index name off IMAGE arguments, with a notice.

    The old form was ``add NAME IMAGE...``: a first argument that names an existing index
    (and is not itself an image file or dataset item) is taken as the index.
    """
    from siamindex.bundle import index_path

    first = images[0]
    if (
        len(images) < 2
        or ctx.get_parameter_source("index_name") == ParameterSource.COMMANDLINE
        or ":" in first
        or Path(first).is_file()
    ):
        return index_name, images
    try:
        is_index = index_path(first).is_dir()
    except SiamIndexError:
        return index_name, images
    if not is_index:
        return index_name, images
    _deprecated(f"{how} is now --index NAME IMAGE....")
    return first, images[1:]


@cli.command()
@index_option
@click.argument("old_name", required=False, metavar="")
@click.option("--ids", required=True, help="Ids to remove: 5,7,10-20.")
@format_option
@click.pass_context
@_errors_to_messages
def remove(
    ctx: click.Context, index_name: str, old_name: str | None, ids: str, output_format: str
) -> None:
    """Remove stored images by id, without a rebuild. Other ids do not change."""
    from siamindex.index import Index

    name = _index_named(ctx, index_name, old_name, "remove NAME")
    wanted = sorted(set(_parse_ids(ids)))
    index = Index.open(name)
    index.remove(wanted)
    if output_format == "json":
        from siamindex.query import Removed, to_json

        removed = Removed(str(index.path), wanted, len(index.store.rows))
        click.echo(json.dumps(to_json(removed), indent=2))
        return
    click.echo(f"removed {len(wanted)} id(s) from {name}")


@cli.command()
@index_option
@click.option("--ids", required=True, help="Ids to relabel: 5,7,10-20.")
@click.option("--class", "class_name", required=True, help="The class they really are.")
@format_option
@_errors_to_messages
def relabel(index_name: str, ids: str, class_name: str, output_format: str) -> None:
    """Store images under another class (e.g. suspects from audit), without a rebuild.

    Atomic like add and remove: a new bundle version is published, or nothing changes.
    """
    from siamindex.index import Index
    from siamindex.query import Relabelled, to_json

    wanted = sorted(set(_parse_ids(ids)))
    index = Index.open(index_name)
    index.relabel(wanted, class_name)
    if output_format == "json":
        done = Relabelled(str(index.path), class_name, wanted, len(index.store.rows))
        click.echo(json.dumps(to_json(done), indent=2))
        return
    click.echo(f"relabelled {len(wanted)} id(s) in {index_name} as class {class_name}")


@cli.command()
@index_option
@click.option(
    "-k",
    "--neighbours",
    "k",
    type=click.IntRange(min=1, max=1000),
    default=10,
    show_default=True,
    help="Stored neighbours each image is compared with.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="List this many suspects (all: --top with the index size).",
)
@click.option(
    "--figure",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw each listed suspect beside its neighbours, with labels, into this PNG.",
)
@output_option
@_errors_to_messages
def audit(index_name: str, k: int, top: int, figure: str | None, output_format: str) -> None:
    """List stored images whose label their nearest stored images disagree with.

    Ranked by how many times closer another class holds an image than its own label does
    (distances to the index's support-th nearest member, as check judges claims). Fix one
    with relabel --ids ID --class C, or remove --ids ID.
    """
    from siamindex.curation import Audit, suspects_figure
    from siamindex.index import Index
    from siamindex.query import to_json

    if figure is not None and not figure.lower().endswith(".png"):
        raise click.BadParameter(f"'{figure}' must end in .png.", param_hint="--figure")
    index = Index.open(index_name)
    found = index.audit(k)
    listed = found[:top]
    if figure is not None:
        suspects_figure(index.store, listed, Path(figure))
    result = Audit(str(index.path), k, len(index.store.rows), len(found), listed)
    if output_format == "json":
        click.echo(json.dumps(to_json(result), indent=2))
        return
    header = ["id", "class", "suggested", "disagreement", "ratio", "split", "source_index"]
    rows = [
        [
            s.id,
            s.class_name,
            s.suggested,
            _number(s.disagreement),
            _number(s.ratio),
            s.split,
            s.source_index,
        ]
        for s in listed
    ]
    if output_format == "csv":
        _emit_csv(header, rows)
        return
    click.echo(_table([[str(cell) for cell in row] for row in rows], header))
    click.echo(
        f"\n{len(found)} of {len(index.store.rows)} stored images have a neighbour of another "
        f"class among their {k} nearest; {len(listed)} listed"
        + (f", drawn in {figure}" if figure else "")
        + ". Fix with: siamindex relabel --ids ID --class C, or siamindex remove --ids ID."
    )


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise click.BadParameter(
                f"'{part}' is not an id or range; write 5,7,10-20.", param_hint="--ids"
            )
        ids.extend(range(int(low), int(high or low) + 1))
    if not ids:
        raise click.BadParameter("no ids given; write e.g. --ids 5,7,10-20.", param_hint="--ids")
    return ids


def _id_list(ids: Any) -> str:
    ids = [int(i) for i in ids]
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def _emit_csv(header: list[str], rows: list[list[Any]]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    click.echo(buffer.getvalue(), nl=False)


@cli.command()
@click.argument("images", nargs=-1, required=True)
@index_option
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Matches per image."
)
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF cells to visit.")
@click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW search breadth.")
@resize_option
@prepare_option
@click.option(
    "--show",
    "show_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a PNG of the query images beside their matches (needs [viz]).",
)
@output_option
@quiet_option
@_errors_to_messages
def query(
    images: tuple[str, ...],
    index_name: str,
    k: int,
    nprobe: int | None,
    ef_search: int | None,
    resize: bool,
    prepare: str,
    show_path: str | None,
    output_format: str,
    quiet: bool,
) -> None:
    """The k nearest stored images of each IMAGE, and its predicted class.

    IMAGE is a PNG/JPEG file, a .npy file (one image or a stack; FILE.npy:ROW for one row), an
    IDX file, or a dataset item/range such as mnist:test:0-99. "no match" means even the nearest
    stored image is beyond the calibrated threshold.
    """
    from siamindex.index import Index
    from siamindex.inputs import load_images

    if show_path:
        from siamindex.report import require_matplotlib

        require_matplotlib()
    index = Index.open(index_name)
    loaded = load_images(images, resize=resize, prepare=prepare)
    results = index.query(
        loaded.pixels, k, loaded.names, nprobe=nprobe, ef_search=ef_search, progress=not quiet
    )
    if show_path:
        from siamindex.report import write_query_figure

        write_query_figure(index, loaded.pixels, loaded.names, results, show_path)
    _print_query(results, output_format, index.facts)


QUERY_CSV_HEADER = [
    "query",
    "predicted",
    "probability",
    "rank",
    "id",
    "class",
    "split",
    "distance",
]


def _probability(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _print_query(results: Sequence[Any], output_format: str, facts: Any) -> None:
    from siamindex.query import to_json

    if output_format == "json":
        click.echo(json.dumps(to_json(results), indent=2))
        return
    header = QUERY_CSV_HEADER
    rows = [
        [
            r.query,
            r.predicted or "no match",
            _probability(r.probability),
            m.rank,
            m.id,
            m.class_name,
            m.split,
            f"{m.distance:.4f}",
        ]
        for r in results
        for m in r.matches
    ]
    if output_format == "csv":
        _emit_csv(header, rows)
        return
    click.echo(_table([tuple(map(str, row)) for row in rows], tuple(header)))
    threshold = results[0].threshold if results else float("nan")
    click.echo(
        f"\n{len(results)} quer{'y' if len(results) == 1 else 'ies'}; "
        f"threshold {threshold:.4f} (Euclidean). "
        + (
            f"The class whose {facts.support} nearest members are nearest is predicted when the "
            "membership claim for it holds"
            if facts.rule == NEAREST_CLASS_RULE
            else "The nearest match's class is predicted when the membership claim for it holds"
        )
        + " (see `siamindex check`); otherwise 'no match'. probability: calibrated chance that "
        "the query belongs to the predicted class."
    )


@cli.command()
@click.argument("images", nargs=-1)
@click.option(
    "--class", "class_name", default=None, help="The class every IMAGE is claimed to belong to."
)
@click.option(
    "--claims",
    "claims_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV with columns image,class and optionally true_class.",
)
@index_option
@click.option("--per-class", is_flag=True, help="Use each class's calibrated threshold.")
@click.option(
    "--nprobe",
    type=click.IntRange(min=1),
    default=None,
    help="IVF index types: search an IVF index per class, visiting this many lists "
    "(faster, approximate; default: exact).",
)
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=None,
    help="HNSW index types: the breadth of each class's graph search (higher: nearer exact, "
    "slower; default: 16).",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --claims: write the answers to this CSV (chunk by chunk, for files of any "
    "length) and print only the summary.",
)
@_with_engine
@resize_option
@prepare_option
@output_option
@quiet_option
@_errors_to_messages
def check(
    images: tuple[str, ...],
    class_name: str | None,
    claims_file: str | None,
    index_name: str,
    per_class: bool,
    nprobe: int | None,
    ef_search: int | None,
    out_file: str | None,
    engine: str,
    address: str | None,
    workers: int | None,
    resize: bool,
    prepare: str,
    output_format: str,
    quiet: bool,
) -> None:
    """Answer claims "this image belongs to class C", in batches.

    Either --class C with IMAGE arguments, or --claims FILE.csv. A claim is true when the
    nearest stored members of C (see `info`: support) are within the threshold. Exit code 0
    even when claims are false.
    """
    if (class_name is None) == (claims_file is None):
        raise click.UsageError("Give either --class C with IMAGE arguments, or --claims FILE.csv.")
    if class_name is not None and not images:
        raise click.UsageError(
            "--class needs IMAGE arguments, e.g. siamindex check --class 7 a.png."
        )
    if claims_file is not None and images:
        raise click.UsageError("--claims takes its images from the CSV; drop the IMAGE arguments.")
    if out_file is not None and claims_file is None:
        raise click.UsageError("--out writes the answers to --claims FILE.csv; add --claims.")
    if engine == "ray" and out_file is None:
        raise click.UsageError("--engine ray writes its answers to a file; add --out FILE.csv.")
    _check_engine(engine, address, workers)
    if out_file is not None and claims_file is not None:
        from siamindex.bulk import CheckSettings, check_claims

        settings = CheckSettings(index_name, per_class, nprobe, ef_search, resize, prepare)
        done = check_claims(claims_file, out_file, settings, engine, address, workers)
        _print_bulk_check(done, output_format)
        return
    from siamindex.index import Index
    from siamindex.query import membership_summary

    index = Index.open(index_name)
    index.check_search(nprobe, ef_search)  # before the images are read and embedded
    pixels, names, classes, truth = _claims(index, images, class_name, claims_file, resize, prepare)
    results = index.check(pixels, classes, per_class, names, truth, not quiet, nprobe, ef_search)
    _print_check(results, membership_summary(results), output_format, index.facts.rule)


def _claims(
    index: Any,
    images: tuple[str, ...],
    class_name: str | None,
    claims_file: str | None,
    resize: bool,
    prepare: str,
) -> tuple[Any, list[str], list[str], list[str | None]]:
    """(pixels, names, claimed classes, true classes) from a claims CSV or --class IMAGE..."""
    from siamindex.bulk import check_claim_classes
    from siamindex.inputs import load_images, read_claims

    if claims_file is not None:
        claims = read_claims(claims_file, resize=resize, prepare=prepare)
        check_claim_classes(index.store.class_names, claims, claims_file)
        return claims.images.pixels, claims.images.names, claims.classes, claims.true_classes
    loaded = load_images(images, resize=resize, prepare=prepare)
    known = index.store.class_names
    truth = [known[t] if 0 <= t < len(known) else None for t in loaded.labels]
    return loaded.pixels, loaded.names, [str(class_name)] * len(loaded), truth


def _print_check(results: Sequence[Any], summary: Any, output_format: str, rule: str) -> None:
    from siamindex.query import CHECK_CSV_HEADER, check_row, to_json

    if output_format == "json":
        click.echo(json.dumps({"results": to_json(results), "summary": summary}, indent=2))
        return
    rows = [check_row(r) for r in results]
    if output_format == "csv":
        _emit_csv(CHECK_CSV_HEADER, rows)
        return
    if len(rows) <= 200:
        click.echo(_table([tuple(map(str, row)) for row in rows], tuple(CHECK_CSV_HEADER)))
    members = sum(r.is_member for r in results)
    support = results[0].support if results else 1
    click.echo(
        f"\n{len(results)} claims: {members} true, {len(results) - members} false. A claim holds "
        f"when the {support} nearest stored members of the class are within the threshold "
        "(support_distance)"
        + (
            f", and no other class has {support} members nearer (nearer_class; a class added "
            "later is weighed in its own threshold)."
            if rule == NEAREST_CLASS_RULE
            else "."
        )
    )
    if summary:
        click.echo(_summary_table(summary))


def _print_bulk_check(done: Any, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(dataclasses.asdict(done), indent=2))
        return
    click.echo(
        f"{done.claims} claims: {done.members} true, {done.claims - done.members} false; "
        f"answers in {done.out}."
    )
    if done.summary:
        click.echo(_summary_table(done.summary))


def _summary_table(summary: dict[str, Any]) -> str:
    columns = ("accuracy", "precision", "recall", "f1")
    rows = [("all", *(_number(summary[c]) for c in columns))]
    rows += [
        (name, *(_number(part[c]) for c in columns)) for name, part in summary["per_class"].items()
    ]
    counts = (
        f"confusion: {summary['true_positive']} true positives, {summary['false_positive']} "
        f"false positives, {summary['false_negative']} false negatives, "
        f"{summary['true_negative']} true negatives"
    )
    return "\n" + _table(rows, ("class", *columns)) + "\n" + counts


@cli.command()
@click.argument("first")
@click.argument("second")
@index_option
@click.option(
    "--encoder",
    "encoder_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Compare with this encoder instead of an index's (threshold: the article's 0.5).",
)
@resize_option
@prepare_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@_errors_to_messages
def compare(
    first: str,
    second: str,
    index_name: str,
    encoder_path: str | None,
    resize: bool,
    prepare: str,
    output_format: str,
) -> None:
    """Distance between two images and the verdict "same" or "different"."""
    from siamindex.inputs import load_images
    from siamindex.query import to_json

    pair = load_images([first, second], resize=resize, prepare=prepare)
    if len(pair) != 2:
        raise click.UsageError("compare takes exactly two images; name single rows (FILE.npy:ROW).")
    if encoder_path:
        from siamindex.defaults import ARTICLE_THRESHOLD
        from siamindex.embedding import load_embedder
        from siamindex.query import compare as compare_vectors

        vectors = load_embedder(encoder_path)(pair.pixels)
        result = compare_vectors(
            vectors[0], vectors[1], (pair.names[0], pair.names[1]), ARTICLE_THRESHOLD
        )
    else:
        from siamindex.index import Index

        result = Index.open(index_name).compare(
            pair.pixels[0], pair.pixels[1], (pair.names[0], pair.names[1])
        )
    if output_format == "json":
        click.echo(json.dumps(to_json(result), indent=2))
        return
    verdict = "same" if result.same else "different"
    click.echo(
        f"{result.first} vs {result.second}: distance {result.distance:.4f}, "
        f"threshold {result.threshold:.4f} -> {verdict}"
    )


@cli.command()
@index_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="report",
    show_default=True,
    help="Folder for the PNG figures and report.html.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Drives the random samples.")
@_errors_to_messages
def report(index_name: str, out_dir: str, seed: int) -> None:
    """Write figures of an index (PNG) and one self-contained HTML page that opens offline."""
    from siamindex.index import Index
    from siamindex.report import require_matplotlib, write_report

    require_matplotlib()  # before any slow work, say how to install it if missing
    written = write_report(Index.open(index_name), out_dir, seed)
    for path in written:
        click.echo(str(path))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@cli.command()
@click.option(
    "--index",
    "index_names",
    multiple=True,
    default=[DEFAULT_INDEX],
    show_default=True,
    envvar=INDEX_ENV,
    help="Index to serve (repeat for several), served under its last path part.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token that writes need (every route, beyond loopback). "
    "Or set SIAMINDEX_TOKEN.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per encoder call when concurrent requests are batched.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long the batcher waits for more requests after the first.",
)
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=64.0, show_default=True)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=25_000,
    show_default=True,
    help="Images or claims per request.",
)
@click.option(
    "--max-image-side",
    type=click.IntRange(min=28),
    default=2048,
    show_default=True,
    help="Width/height limit of uploaded PNG/JPEG images.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes, each with its own encoder and copy of the index (memory grows "
    "with them); they share the port, follow index changes and add up /metrics.",
)
@_errors_to_messages
def serve(
    index_names: tuple[str, ...],
    host: str,
    port: int,
    token_file: str | None,
    max_batch: int,
    max_wait_ms: float,
    max_body_mb: float,
    max_images: int,
    max_image_side: int,
    workers: int,
) -> None:
    """Serve indexes over HTTP (FastAPI + uvicorn): query, check, compare, add, remove, a page
    to draw a digit at /, docs at /docs, Prometheus metrics at /metrics."""  # fmt: skip
    from siamindex.index import Index

    try:
        import uvicorn

        from siamindex.api import SERVE_CONFIG_ENV, ServeConfig, create_app
        from siamindex.api_support import MULTIPROCESS_ENV
        from siamindex.service import Limits
    except ImportError as exc:
        raise click.ClickException(
            f"serve needs the serve extra ({exc.name} is missing): pip install 'siamindex[serve]'."
        ) from None
    token = _read_token(token_file)
    exposed = host not in LOOPBACK
    if exposed and token is None:
        raise click.UsageError(
            f"Binding {host} exposes the index beyond this machine; give --token-file (or "
            "SIAMINDEX_TOKEN) so that every route needs the token, or bind 127.0.0.1."
        )
    names = tuple(dict.fromkeys(index_names))
    keys = [Index.open(name).path.name for name in names]  # verify each before starting
    if len(set(keys)) != len(keys):
        raise click.UsageError("Two served indexes share a name; serve each under its own name.")
    config = ServeConfig(
        indexes=names,
        token=token,
        token_for_reads=exposed,
        limits=Limits(int(max_body_mb * 2**20), max_images, max_image_side),
        max_batch=max_batch,
        max_wait=max_wait_ms / 1000,
    )
    processes = f", {workers} worker processes" if workers > 1 else ""
    click.echo(
        f"serving {', '.join(keys)} on http://{host}:{port}/{processes} (Ctrl-C to stop)", err=True
    )
    run = functools.partial(
        uvicorn.run, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30
    )
    if workers == 1:
        run(create_app(config))
        return
    # Each worker is a fresh process that builds its app from the environment; their metrics
    # meet in a folder of their own, removed when the server stops.
    with tempfile.TemporaryDirectory(prefix="siamindex-metrics-") as shared:
        os.environ[SERVE_CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
        os.environ[MULTIPROCESS_ENV] = shared
        run("siamindex.api:app_from_environment", factory=True, workers=workers)


def _read_token(token_file: str | None) -> str | None:
    if token_file is None:
        token = os.environ.get("SIAMINDEX_TOKEN", "").strip()
        return token or None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read '{token_file}' ({exc.strerror}).", param_hint="--token-file"
        ) from None
    if len(token) < 16:
        raise click.BadParameter(
            f"'{token_file}' holds {len(token)} characters; use a token of 16 or more "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())').",
            param_hint="--token-file",
        )
    return token


def main() -> None:
    cli(prog_name="siamindex")
