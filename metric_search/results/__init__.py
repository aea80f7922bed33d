"""Tools over finished (or running) searches: metric references, export, analysis and its report, comparison
of runs, re-evaluation under another protocol, and the audit of a run's gated children. They read a run
directory; the search loop never imports them."""
