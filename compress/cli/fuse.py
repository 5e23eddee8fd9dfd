from __future__ import annotations

import click


@click.group("fuse", context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Knowledge fusion of models with different tokenizers.

    \b
    compress fuse represent MODEL --data D -o REP
    compress fuse align PIVOT_REP SOURCE_REP -o ALIGNED
    compress fuse train PIVOT --data D --pivot-rep REP --source ALIGNED -o TARGET
    compress fuse run RECIPE.yml -o OUT
    """


def _register_explicit() -> None:
    from compress.cli.fuse_explicit import register

    register(command)


_register_explicit()
