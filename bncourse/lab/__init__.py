"""The experiment toolkit the chapters use: data, models, training, recording, measurements and plots.

One small module per idea; none of it is needed to use batch norm itself (that is `bncourse.functional`,
`bncourse.layers` and `bncourse.nn`). Import the modules directly, e.g. `from bncourse.lab.data import
load_digits_split`.
"""
