# A regular package, so that `tests.helpers` is ours in every process: mmsegmentation's wheel
# installs a top-level `tests` package of its own into site-packages.
