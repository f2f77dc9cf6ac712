"""The `signalops` command: the local stack, the demo, and operator actions."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from libs.common.errors import SignalopsError
from libs.common.settings import Settings

if TYPE_CHECKING:
    from services.retrain.core.model_card import ModelCard

app = typer.Typer(
    help="signalops: real-time predictions on streaming signals.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list and replay.", no_args_is_help=True)
app.add_typer(models_app, name="models")
drift_app = typer.Typer(help="The drift monitor: what it measures per model.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(drift_app, name="drift")
features_app = typer.Typer(
    help="The feature stores: offline compaction, online rebuild.", no_args_is_help=True
)
app.add_typer(features_app, name="features")
console = Console()


def _settings() -> Settings:
    return Settings()


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=1)


@app.command()
def up() -> None:
    """Start the embedded local stack (Kafka, Redis, Ray + Serve, services) in the background."""
    import time

    from infra.local.stack import LocalStack

    stack = LocalStack(_settings())
    if stack.is_up():
        console.print("signalops is already up.")
        return
    started_at = time.monotonic()
    try:
        with console.status("starting") as status:
            stack.up(on_step=lambda name: status.update(f"starting {name}"))
    except SignalopsError as exc:
        raise _fail(exc) from None
    console.print(f"signalops is up in {time.monotonic() - started_at:.1f}s.")
    _print_status(stack)


@app.command()
def down() -> None:
    """Stop everything `up` started; nothing is left running."""
    from infra.local.stack import LocalStack

    stopped = LocalStack(_settings()).down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running.")


@app.command()
def status() -> None:
    """Show each component of the local stack: running, healthy, where."""
    from infra.local.stack import LocalStack

    stack = LocalStack(_settings())
    _print_status(stack)
    if not all(ok for _, _, ok in stack.status()):
        raise typer.Exit(code=3)


def _print_status(stack) -> None:  # type: ignore[no-untyped-def]
    table = Table("component", "running", "healthy", "port", "log")
    for comp, running, healthy in stack.status():
        table.add_row(
            comp.name,
            "yes" if running else "no",
            "[green]yes[/green]" if healthy else "[red]no[/red]",
            str(comp.port),
            str(stack.proc(comp.name).log_file),
        )
    console.print(table)
    _print_polled_sources(stack.s)
    console.print(f"Ray dashboard: http://127.0.0.1:{stack.s.ray_dashboard_port}")


def _print_polled_sources(settings: Settings) -> None:
    """Each polled source's breaker and what it serves, from ingest's /readyz body.

    Informational: a polled source that is down never fails `status` (ingest stays ready).
    """
    import httpx

    url = f"http://{settings.ingest_host}:{settings.ingest_port}/readyz"
    try:
        sources = httpx.get(url, timeout=2.0).json().get("sources") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return
    if not sources:
        return
    colour = {"closed": "green", "half_open": "yellow", "open": "red"}
    table = Table("polled source", "breaker", "serving", "last ok", "snapshot age (s)")
    for name, state in sorted(sources.items()):
        breaker = str(state.get("breaker"))
        age = state.get("snapshot_age_s")
        table.add_row(
            name,
            f"[{colour.get(breaker, 'red')}]{breaker}[/]",
            str(state.get("serving")),
            str(state.get("last_ok_at") or "never"),
            "" if age is None else f"{age:.1f}",
        )
    console.print(table)


@app.command()
def demo(
    duration: Annotated[
        float,
        typer.Option(
            help="Seconds to run; 0 runs until the loop has closed (drift found, new "
            "version serving and judged), or Ctrl-C."
        ),
    ] = 0,
    rate: Annotated[
        float, typer.Option(help="Reports per second per source; each is scored and labelled.")
    ] = 20.0,
    drift_after: Annotated[
        int, typer.Option(help="Labels judging the champion before the concept drift.")
    ] = 1000,
    keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """Start the stack and show the loop live: a concept drift found and fixed unaided."""
    from infra.demo import run_demo
    from infra.local.stack import LocalStack

    stack = LocalStack(_settings())
    try:
        if not stack.is_up():
            with console.status("starting the stack") as st:
                stack.up(on_step=lambda name: st.update(f"starting {name}"))
        run_demo(stack.s, console, duration_s=duration, rate=rate, drift_after=drift_after)
    except SignalopsError as exc:
        raise _fail(exc) from None
    finally:
        if not keep:
            with console.status("stopping the stack"):
                stack.down()
            console.print("stack stopped.")


@app.command()
def retrain(
    model: Annotated[str | None, typer.Option(help="Model name from the definitions file.")] = None,
    reason: Annotated[str, typer.Option(help="Why; kept with the new version.")] = "manual",
    since: Annotated[
        datetime | None,
        typer.Option(help="Train only on rows as of this UTC time or later (data window)."),
    ] = None,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the request's JSON schema and exit.")
    ] = False,
) -> None:
    """Ask for a retrain (serve's admin API publishes the request); the retrain service
    trains, registers and may promote."""
    import json

    from libs.common.schemas import RetrainModel

    if schema:
        console.print_json(json.dumps(RetrainModel.model_json_schema()))
        return
    if model is None:
        raise typer.BadParameter("--model is required", param_hint="--model")
    window = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    body = {"model": model, "reason": reason, "since": window.isoformat() if window else None}
    answer = _admin("serve", "POST", "/v1/admin/retrain", body)
    console.print(f"retrain requested for {model!r} (request {answer['request_id']}).")


def _admin(
    service: Literal["serve", "ingest"], method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One admin call with SIGNALOPS_API_KEY (or the admin token); exits 1 on failure."""
    from infra.admin_client import AdminCallFailed, admin_call

    try:
        return admin_call(_settings(), service, method, path, body)
    except AdminCallFailed as exc:
        raise _fail(exc) from None


@models_app.command("list")
def models_list() -> None:
    """Registered model versions with aliases and holdout metrics."""
    from libs.common.definitions import load_definitions
    from services.retrain.admin import list_models

    s = _settings()
    names = [m.name for m in load_definitions(s.definitions).models]
    table = Table("model", "version", "aliases", "auc", "rows", "reason", "created")
    for name, versions in list_models(s, names).items():
        for v in versions:
            table.add_row(
                name,
                v.version,
                ",".join(v.aliases) or "-",
                f"{v.metrics.get('auc', float('nan')):.3f}",
                str(int(v.metrics.get("rows", 0))),
                v.tags.get("reason", ""),
                v.created.strftime("%Y-%m-%d %H:%M:%S"),
            )
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: str,
    version: str,
    reason: Annotated[str, typer.Option(help="Why; kept with the event.")] = "manual promotion",
) -> None:
    """Make VERSION the champion of NAME; every serve replica follows within seconds."""
    body = {"version": version, "reason": reason}
    move = _admin("serve", "POST", f"/v1/admin/models/{name}/promote", body)
    console.print(
        f"{name} version {move['version']} is champion (was {move['previous'] or 'none'})."
    )


@models_app.command("card")
def models_card(name: str, version: str) -> None:
    """Print the model card of VERSION: data window, metrics, slices, gates, importance."""
    from pydantic import ValidationError

    from libs.common.registry import MlflowRegistry
    from libs.common.registry.aliases import MODEL_CARD
    from services.retrain.core.model_card import ModelCard

    registry = MlflowRegistry.from_settings(_settings())
    if version not in {v.version for v in registry.list_versions(name)}:
        raise _fail(
            SignalopsError(
                f"model {name!r} has no version {version!r}; see `signalops models list`"
            )
        )
    text = registry.read_file(name, version, MODEL_CARD)
    if text is None:
        raise _fail(
            SignalopsError(
                f"{name} version {version} has no {MODEL_CARD} (registered before model cards)"
            )
        )
    try:
        card = ModelCard.model_validate_json(text).for_version(version)
    except ValidationError as exc:
        raise _fail(
            SignalopsError(f"{name} version {version}: unreadable {MODEL_CARD}: {exc}")
        ) from None
    _print_card(card)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_card(card: ModelCard) -> None:
    # Reasons, notes and slice labels are free text ("[0.2, 0.5)"): never rich markup.
    from rich.markup import escape

    verdict = "[green]promoted[/green]" if card.promoted else "[yellow]not promoted[/yellow]"
    console.print(
        f"[bold]{card.model} version {card.version}[/bold]  {verdict}  "
        f"created {card.created:%Y-%m-%d %H:%M:%S} UTC  reason: {escape(card.reason)}"
    )
    d = card.data
    window = Table(
        "policy",
        "since",
        "rows",
        "train",
        "holdout",
        "first row",
        "holdout from",
        "last row",
        "bootstrap",
        title="data window",
    )
    window.add_row(
        escape(d.policy) or "-",
        f"{d.since:%Y-%m-%d %H:%M:%S}" if d.since else "-",
        str(d.rows),
        str(d.train_rows),
        str(d.holdout_rows),
        *(
            f"{t:%Y-%m-%d %H:%M:%S}" if t else "-"
            for t in (d.first_row, d.holdout_from, d.last_row)
        ),
        "yes" if d.bootstrap_history else "no",
    )
    console.print(window)
    champion = f"champion v{card.champion_version}" if card.champion_version else "champion"
    metrics = Table("metric", "candidate", champion, title="metrics on the candidate's holdout")
    for key in ("auc", "log_loss", "calibration_error"):
        theirs = getattr(card.champion, key) if card.champion else None
        metrics.add_row(key, _num(getattr(card.candidate, key)), _num(theirs))
    console.print(metrics)
    if card.champion_note:
        console.print(f"champion not compared: {escape(card.champion_note)}")
    if card.slices:
        slices = Table("feature", "slice", "rows", "candidate auc", "champion auc", title="slices")
        for s in card.slices:
            slices.add_row(
                s.feature, escape(s.slice), str(s.rows), _num(s.candidate_auc), _num(s.champion_auc)
            )
        console.print(slices)
    colour = {"pass": "green", "fail": "red", "skipped": "dim"}
    gates = Table("gate", "status", "detail", title="promotion gates")
    for g in card.gates:
        gates.add_row(escape(g.name), f"[{colour[g.status]}]{g.status}[/]", escape(g.detail))
    console.print(gates)
    importance = Table("feature", "gain share", title="feature importance (LightGBM gain)")
    for f in card.feature_importance:
        importance.add_row(f.feature, f"{f.gain:.3f}")
    console.print(importance)
    reference = Table("column", "sample", "bins", "missing", title="drift reference")
    for r in card.drift_reference:
        reference.add_row(r.column, str(r.sample_size), str(r.bins), f"{r.missing_share:.3f}")
    console.print(reference)
    console.print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in card.timings.items()))


@models_app.command("rollback")
def models_rollback(
    name: str,
    reason: Annotated[str, typer.Option(help="Why; kept with the event.")] = "manual rollback",
) -> None:
    """Give the champion alias back to the previous champion."""
    move = _admin("serve", "POST", f"/v1/admin/models/{name}/rollback", {"reason": reason})
    console.print(f"{name} rolled back to version {move['version']} (was {move['previous']}).")


@models_app.command("traffic")
def models_traffic(
    name: str,
    challenger_fraction: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Share of entities the challenger answers."),
    ] = None,
    shadow: Annotated[
        bool | None,
        typer.Option(
            "--shadow/--no-shadow", help="Score the challenger on every request, never return it."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept with the event.")] = "manual traffic",
) -> None:
    """Set NAME's challenger fraction and shadow mode; every serve replica follows."""
    if challenger_fraction is None and shadow is None:
        raise typer.BadParameter("give --challenger-fraction, --shadow or --no-shadow")
    body = {"challenger_fraction": challenger_fraction, "shadow": shadow, "reason": reason}
    view = _admin("serve", "PUT", f"/v1/admin/models/{name}/traffic", body)
    split = ", ".join(f"{k} {v:.0%}" for k, v in view["traffic"].get(name, {}).items())
    console.print(
        f"{name}: challenger fraction {view['challenger_fraction'].get(name, 0.0):g}, "
        f"shadow {'on' if view['shadow'].get(name) else 'off'}; answers now: {split or '-'}."
    )


@drift_app.command("status")
def drift_status(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
) -> None:
    """Rolling performance per version and variant, and each input's last PSI and KS
    p-value, as the retrain service's monitor exports them (its /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    s = _settings()
    url = f"http://127.0.0.1:{s.retrain_metrics_port}/metrics"
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError as exc:
        raise _fail(
            SignalopsError(f"the retrain service does not answer at {url}: {exc}")
        ) from None
    rolling: dict[tuple[str, str, str], dict[str, float]] = {}
    drift: dict[tuple[str, str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if model is not None and labels.get("model") != model:
                continue
            if sample.name == "signalops_model_rolling":
                key = (labels["model"], labels["version"], labels["variant"])
                rolling.setdefault(key, {})[labels["metric"]] = sample.value
            elif sample.name in ("signalops_drift_psi", "signalops_drift_ks_pvalue"):
                key = (labels["model"], labels["version"], labels["feature"])
                drift.setdefault(key, {})[sample.name.rsplit("_", 1)[-1]] = sample.value
    table = Table("model", "version", "variant", "labels", "accuracy", "log loss", "auc", "calib.")
    for (m, v, variant), r in sorted(rolling.items()):
        table.add_row(
            m,
            v,
            variant,
            f"{r.get('labels', 0):.0f}",
            *(
                f"{r[k]:.3f}" if k in r else "-"
                for k in ("accuracy", "log_loss", "auc", "calibration")
            ),
        )
    console.print(table)
    inputs = Table("model", "version", "input", "psi", "ks p-value")
    for (m, v, feature), d in sorted(drift.items()):
        inputs.add_row(
            m,
            v,
            feature,
            f"{d.get('psi', float('nan')):.3f}",
            f"{d.get('pvalue', float('nan')):.2g}",
        )
    console.print(inputs)


def _dlq_query(
    reason: str | None, source: str | None, since: str | None, until: str | None, page: int | None
) -> Any:
    from infra.dlq import LetterQuery

    def when(text: str | None, name: str) -> datetime | None:
        if text is None:
            return None
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _fail(ValueError(f"--{name} {text!r} is not an ISO time")) from None
        return at if at.tzinfo else at.replace(tzinfo=UTC)  # a bare time is UTC

    return LetterQuery(reason, source, when(since, "since"), when(until, "until"), page)


_REASON = Annotated[str | None, typer.Option(help="Only this reason.")]
_SOURCE = Annotated[str | None, typer.Option(help="Only this source.")]
_SINCE = Annotated[str | None, typer.Option(help="Rejected at or after this ISO time (UTC).")]
_UNTIL = Annotated[str | None, typer.Option(help="Rejected before this ISO time (UTC).")]
_PAGE = Annotated[int | None, typer.Option(help="Records per admin call (ingest's default).")]


@dlq_app.command("list")
def dlq_list(
    reason: _REASON = None,
    source: _SOURCE = None,
    since: _SINCE = None,
    until: _UNTIL = None,
    limit: Annotated[int, typer.Option(help="Show the newest N (0: all); all are counted.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Every match, one JSON per line.")
    ] = False,
    page_size: _PAGE = None,
) -> None:
    """Every dead letter on signals.dlq (through ingest's admin API, page by page), with
    stage, source, reason and detail."""
    import heapq
    import itertools
    import json

    from rich.markup import escape
    from rich.progress import Progress

    from infra.admin_client import AdminCallFailed
    from infra.dlq import list_pages

    query = _dlq_query(reason, source, since, until, page_size)
    # The newest `limit` by rejection time (ISO UTC text sorts as time), in bounded memory.
    newest: list[tuple[str, int, dict[str, Any]]] = []
    order = itertools.count()  # ties in time keep reading order, never compare dicts
    matched = scanned = unreadable = 0
    try:
        with Progress(console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("reading signals.dlq", total=None)
            for page in list_pages(_settings(), query):
                matched += len(page["letters"])
                scanned += page["scanned"]
                unreadable += page["unreadable"]
                progress.update(task, completed=scanned, total=scanned + page["remaining"])
                if as_json:
                    for letter in page["letters"]:
                        print(json.dumps(letter))
                else:
                    for letter in page["letters"]:
                        item = (letter["event_time"], next(order), letter)
                        if not limit or len(newest) < limit:
                            heapq.heappush(newest, item)
                        else:
                            heapq.heappushpop(newest, item)
    except AdminCallFailed as exc:
        raise _fail(exc) from None
    if as_json:
        return
    table = Table("time", "stage", "source", "reason", "detail", "original")
    for _, _, r in sorted(newest, key=lambda item: item[:2]):
        original = base64.b64decode(r["original_b64"])[:40].decode(errors="replace")
        table.add_row(
            r["event_time"][:19],
            r["stage"],
            escape(r["source"]),
            escape(r["reason"]),
            escape(r["detail"][:60]),
            escape(original),
        )
    console.print(table)
    console.print(
        f"{matched} dead letters match of {scanned} read ({len(newest)} newest shown)"
        + (f"; {unreadable} records are not dead letters" if unreadable else "")
        + "."
    )


@dlq_app.command("replay")
def dlq_replay(
    reason: _REASON = None,
    source: _SOURCE = None,
    since: _SINCE = None,
    until: _UNTIL = None,
    to: Annotated[str | None, typer.Option(help="Target topic; default signals.raw.")] = None,
    page_size: _PAGE = None,
    show_all: Annotated[bool, typer.Option(help="One line per letter, not only refusals.")] = False,
) -> None:
    """Send chosen dead letters' original bytes back through ingest (its admin API):
    signals via the raw topic, outcomes through ingest's validation. Each letter is
    replayed at most once; an interrupted replay run again replays only the rest. Exits 1
    when a letter was rejected again."""
    import collections

    from rich.markup import escape
    from rich.progress import Progress

    from infra.admin_client import AdminCallFailed
    from infra.dlq import replay_pages

    query = _dlq_query(reason, source, since, until, page_size)
    counts: collections.Counter[str] = collections.Counter()
    table = Table("event id", "source", "reason", "outcome", "detail")
    target = to or _settings().topics.raw
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("replaying", total=None)
            read = 0
            for page in replay_pages(_settings(), query, to):
                counts.update(page["counts"])
                read += page["scanned"]
                target = page["target"]
                progress.update(task, completed=read, total=read + page["remaining"])
                for line in page["results"]:
                    if show_all or line["outcome"] == "rejected":
                        table.add_row(
                            line["event_id"][:12],
                            escape(line["source"]),
                            escape(line["reason"]),
                            line["outcome"],
                            escape(line["detail"][:80]),
                        )
    except AdminCallFailed as exc:
        console.print(f"so far: {dict(counts)}")
        raise _fail(exc) from None
    if table.row_count:
        console.print(table)
    console.print(
        f"replayed {counts['replayed']} to {target}, {counts['accepted']} outcomes accepted, "
        f"{counts['rejected']} rejected again, {counts['skipped']} skipped (replayed before)."
    )
    if counts["rejected"]:
        raise typer.Exit(1)


@features_app.command("compact")
def features_compact(
    before: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="Compact dates strictly before this UTC date (default today: every finished day).",
        ),
    ] = None,
) -> None:
    """Merge each past day's offline files into one file per day (signals, outcomes,
    predictions), dropping duplicates; safe while the services write."""
    from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore

    cutoff = (before.replace(tzinfo=UTC) if before else datetime.now(UTC)).timestamp()
    store = OfflineStore(_settings().offline_dir)
    table = Table("kind", "date", "files merged", "rows", "duplicates dropped")
    merged = 0
    for kind in (SIGNALS, OUTCOMES, PREDICTIONS):
        for r in store.compact_all(kind, before=cutoff):
            done = r.files_merged > 0
            merged += done
            table.add_row(
                kind,
                r.date,
                str(r.files_merged),
                str(r.rows) if done else "-",
                str(r.dropped) if done else "-",
            )
    console.print(table)
    console.print(f"{merged} date folders compacted under {store.root}.")


@features_app.command("rebuild")
def features_rebuild(
    view: Annotated[
        list[str] | None, typer.Option(help="Only this view (repeatable); default every view.")
    ] = None,
) -> None:
    """Rebuild the online store's states and vectors from the offline store, after a
    Redis loss. Stop the features service first: its live writes would race."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from services.features.rebuild import rebuild
    from services.features.settings import FeaturesSettings

    settings = FeaturesSettings()
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"rebuilding {name}", total=total)
            bar.update(tasks[name], completed=done, total=total)

        try:
            report = asyncio.run(rebuild(settings, views=view, progress=on_progress))
        except KeyError as exc:
            raise _fail(
                SignalopsError(f"no feature view {exc}; see the definitions file")
            ) from None
    table = Table("view", "version", "entities", "expired", "events replayed", "seconds")
    for v in report.views:
        table.add_row(
            v.view,
            str(v.version),
            str(v.entities),
            str(v.expired),
            str(v.events),
            f"{v.seconds:.1f}",
        )
    console.print(table)
    console.print(f"{report.entities} entity vectors written to {settings.redis_url}.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
