"""The chaos suite (issue 5): faults injected into a private broker and real consumers."""
