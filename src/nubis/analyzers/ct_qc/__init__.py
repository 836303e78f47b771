"""The built-in CT series QC analyzer ``ct-qc``: analyzer (the plug-in), checks (what is
measured, pure numpy), report (the SR and SEG, via highdicom)."""
