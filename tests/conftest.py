"""Test-wide setup: the generated demo data goes to a temporary folder, never the user's
cache. It must be set before ``updetr_d2`` is imported (registration resolves the root)."""
import os
import tempfile

os.environ.setdefault("UPDETR_DEMO_ROOT", os.path.join(tempfile.gettempdir(), "updetr_d2_test_demo_v2"))
