"""Grading without a sandbox (--unsafe-no-sandbox): the files no submission may change, put back when one did."""
from __future__ import annotations

from pathlib import Path


class FileGuard:
    """Without a sandbox (--unsafe-no-sandbox): files no submission may change, put back when one did.

    Source notebooks, the nbgrader templates and the records: student code runs as the
    grader's user then, so it can write anywhere the grader can. The parent keeps a copy and,
    after each submission (one at a time without a sandbox, so the culprit is known), puts
    back what changed and flags that submission, naming the files.
    """

    def __init__(self, roots: list[Path]):
        self.roots = roots
        self.saved: dict[Path, bytes] = {}
        for path in self._files():
            self.accept(path)

    def _files(self) -> list[Path]:
        return [p for root in self.roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]

    def accept(self, path: Path) -> None:
        self.saved[path] = path.read_bytes()

    def accept_all(self) -> None:
        """After the parent wrote a record and a feedback page: they are the new state to keep."""
        self.saved = {path: path.read_bytes() for path in self._files()}

    def restore_changes(self) -> list[str]:
        """Put back every changed file; the names of those that changed."""
        changed = []
        for path in set(self._files()) | set(self.saved):
            old = self.saved.get(path)
            try:
                new = path.read_bytes()
            except OSError:
                new = None
            if new == old:
                continue
            changed.append(str(path))
            if old is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(old)
        return sorted(changed)
