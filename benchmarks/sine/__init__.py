"""The sine forecasting task (seeds 000-003) run with torch.nn and fastrnn side by side.

One job per file: data (series, CSV, windows), models (the seeds' networks), protocols
(one trainer per task), runner (both implementations in lockstep), sweep, machine
(result header), plots and report. benchmarks/sine_forecast.py is the command line.
"""
