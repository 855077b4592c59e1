"""Getting back what was missed or failed.

    recovery.py    what Suki sent while nobody listened: sessions read from Suki's status
                   API (`suki-relay recover`) and the gap watcher that does it by itself
    repair.py      replay and reroute, decided once for the CLI and the console
"""
