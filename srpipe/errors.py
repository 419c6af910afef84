"""The errors srpipe raises on purpose: each names the unit (tile, key, file) and the fix."""


class SrpipeError(Exception):
    """Base of srpipe's own errors."""


class ConfigError(SrpipeError):
    """A config file or key is wrong; the message names the key and the allowed values."""


class TileError(SrpipeError):
    """One tile cannot be processed; the message names the tile and the fix."""

    def __init__(self, tile_id: str, message: str) -> None:
        super().__init__(f"tile {tile_id}: {message}")
        self.tile_id = tile_id

    def __reduce__(self) -> tuple:
        """Pickle as (tile_id, message), so the error crosses process boundaries (DataLoader workers, pools)."""
        return (type(self), (self.tile_id, str(self).removeprefix(f"tile {self.tile_id}: ")))


class StageError(SrpipeError):
    """A whole stage cannot run (e.g. an earlier stage has not finished)."""
