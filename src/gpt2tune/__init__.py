"""gpt2tune: fine-tune GPT-2 fully or with LoRA, generate with priming, and compare honestly."""

from gpt2tune.errors import UserError
from gpt2tune.model import GPT2, GPT2Config, KVCache

__version__ = "0.1.0"
__all__ = ["GPT2", "GPT2Config", "KVCache", "UserError", "__version__"]
