"""``legodnn``: one command for the whole pipeline, one subcommand per phase.

    legodnn extract  --model cv_tasks:cifar_resnet18 --weights teacher.safetensors --sparsities 0,0.3,0.6 --out runs/cli/blocks
    legodnn retrain  --model ... --blocks runs/cli/blocks --out runs/cli/trained --data digits
    legodnn profile  --model ... --blocks runs/cli/trained --data digits --plot
    legodnn latency  --model ... --blocks runs/cli/trained --threads 1
    legodnn optimize --model ... --blocks runs/cli/trained --max-memory-mb 0.35,0.5 --plot
    legodnn serve    --model ... --blocks runs/cli/trained --max-memory-mb 0.4 --duration 5
    legodnn export-onnx --model ... --blocks runs/cli/trained --sparsities 0.3 --out model.onnx
    legodnn inspect  --blocks runs/cli/trained

``main(argv)`` returns the exit code (0 ok, 1 a legodnn error, 2 a wrong command line)
and never raises, so tests and scripts can call it in-process. docs/cli.md has the
whole pipeline with runnable examples.
"""

from .main import main

__all__ = ["main"]
