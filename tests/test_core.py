"""Package-level checks that are not tied to one notebook's demonstration."""
import subprocess, sys
from mrrec.core import load_profile, main

def test_every_profile_loads():
    for name in ('ci', 'demo', 'paper'):
        assert load_profile(name).name == name

def test_console_script_lists_commands():
    out = subprocess.run([sys.executable, '-c', 'from mrrec.core import main; raise SystemExit(main(["--help"]))'],
                         capture_output=True, text=True, check=True).stdout
    assert 'synth' in out
