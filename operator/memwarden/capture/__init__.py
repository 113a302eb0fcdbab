"""Evidence capture. Modules here are pure (the capture plan, the incident lifecycle, pprof
parsing and analysis); :mod:`memwarden.capture.adapters` reads bundles from files and runs
the analysis worker process; :mod:`memwarden.capture.toolbox` is the debug container's
program (standard library only)."""
