"""The `eomae` command line.

    eomae world runs/demo/world            generate the sample world (COGs + STAC)
    eomae serve runs/demo/world            serve it: STAC API (pgstac) + COG server
    eomae search --catalog URL --bbox ...  search a STAC API (default Planetary Computer)
    eomae ingest --catalog URL --bbox W,S,E,N --start D --end D --run-dir RUN
                                           STAC -> co-registered zarr cube (Ray)
    eomae shard --run-dir RUN              cube -> chips -> spatial splits -> WebDataset shards
    eomae verify RUN/shards                re-check every shard, sample and member
    eomae inspect RUN/shards               statistics + a PNG of random samples
    eomae pretrain --run-dir RUN           MultiMAE pretraining on Ray Train
    eomae export RUN/pretrain/NAME         the pretrained encoder + its config, for evaluation
    eomae evaluate --run-dir RUN           probes, kNN, fine-tuning per input subset -> report
    eomae bench loader|train|ingest        ratios against the alternatives (median, spread)
    eomae run PIPELINE.yaml                ingest -> shard -> pretrain -> evaluate, one config
    eomae demo                             `eomae run configs/demo.yaml`: the sample world

Every command takes `--config FILE.yaml`; flags override the file. Run
`eomae COMMAND --help` for the fields, each with its description.
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, CliApp, CliSubCommand
from rich.console import Console
from rich.logging import RichHandler

from eomae.bench_cli import BenchCommand
from eomae.config import (
    ConfigFileError,
    attach_negative_values,
    describe_validation_error,
    expand_config,
)
from eomae.evaluation_cli import EvaluateCommand
from eomae.ingest_cli import (
    IngestCommand,
    IngestFailed,
    SampleCommand,
    SearchCommand,
    ServeCommand,
    WorldCommand,
)
from eomae.pipeline import PipelineError
from eomae.pipeline_cli import DemoCommand, RunCommand
from eomae.shards_cli import InspectCommand, ProblemsFound, ShardCommand, VerifyCommand
from eomae.training_cli import ExportCommand, PretrainCommand
from evaluation.benchmarks import BenchmarkError
from evaluation.run import EvaluationError
from infra.services import ServiceError
from infra.world import WorldError
from ingest.catalog import CatalogError
from ingest.locations import SampleError
from ingest.raster import ReadError
from shards.manifest import ShardSetError
from training.export import CheckpointError
from training.pretrain import PretrainError

console = Console(stderr=True)


class Eomae(
    BaseSettings,
    cli_prog_name="eomae",
    cli_kebab_case=True,
    cli_implicit_flags=True,
    env_prefix="EOMAE_CLI_",
):
    """eomae: Earth-observation foundation-model pipeline (STAC -> cube -> shards -> model)."""

    world: CliSubCommand[WorldCommand] = Field(description=WorldCommand.__doc__)
    serve: CliSubCommand[ServeCommand] = Field(description=ServeCommand.__doc__)
    search: CliSubCommand[SearchCommand] = Field(description=SearchCommand.__doc__)
    sample: CliSubCommand[SampleCommand] = Field(description=SampleCommand.__doc__)
    ingest: CliSubCommand[IngestCommand] = Field(description=IngestCommand.__doc__)
    shard: CliSubCommand[ShardCommand] = Field(description=ShardCommand.__doc__)
    verify: CliSubCommand[VerifyCommand] = Field(description=VerifyCommand.__doc__)
    inspect: CliSubCommand[InspectCommand] = Field(description=InspectCommand.__doc__)
    pretrain: CliSubCommand[PretrainCommand] = Field(description=PretrainCommand.__doc__)
    export: CliSubCommand[ExportCommand] = Field(description=ExportCommand.__doc__)
    evaluate: CliSubCommand[EvaluateCommand] = Field(description=EvaluateCommand.__doc__)
    bench: CliSubCommand[BenchCommand] = Field(description=BenchCommand.__doc__)
    run: CliSubCommand[RunCommand] = Field(description=RunCommand.__doc__)
    demo: CliSubCommand[DemoCommand] = Field(description=DemoCommand.__doc__)

    def cli_cmd(self) -> None:
        """Dispatch to the chosen subcommand."""
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    # Commands print their own summaries; EOMAE_LOG=INFO shows every phase of the services.
    logging.basicConfig(
        level=os.environ.get("EOMAE_LOG", "WARNING").upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console)],
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry chatter hides our errors
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        CliApp.run(Eomae, cli_args=attach_negative_values(expand_config(args)))
    except ValidationError as e:
        console.print(f"[red]error:[/red] invalid arguments\n{describe_validation_error(e)}")
        return 2
    except ProblemsFound as e:
        console.print(f"[red]{e}[/red]")
        return 1
    except (
        WorldError, CatalogError, ConfigFileError, ServiceError, IngestFailed, ReadError,
        ShardSetError, PretrainError, CheckpointError, EvaluationError, BenchmarkError,
        PipelineError, SampleError,
    ) as e:  # fmt: skip
        console.print(f"[red]error:[/red] {e}")
        return 2
    except SystemExit as e:  # argparse: --help (0) or unknown flags (2, message printed)
        if isinstance(e.code, str):  # a message instead of a status (no subcommand given)
            console.print(e.code)
            return 2
        return int(e.code or 0)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
