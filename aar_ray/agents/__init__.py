"""Researcher agents: the LLM backends they think through (a neutral conversation format over
Claude and any OpenAI-compatible endpoint) and the token/dollar/experiment/hour budgets that
bound each researcher."""

from aar_ray.agents.backends import (
    AnthropicBackend,
    Backend,
    BackendError,
    BackendRequestError,
    BackendResponseError,
    MissingAPIKeyError,
    OpenAICompatibleBackend,
    Prices,
    RetriesExhausted,
    RetryPolicy,
    ToolCall,
    ToolSpec,
    Turn,
    Usage,
    load_price_table,
    tool_result_message,
    user_message,
)
from aar_ray.agents.budget import Budget, BudgetExceeded, Spend

__all__ = [
    "AnthropicBackend",
    "Backend",
    "BackendError",
    "BackendRequestError",
    "BackendResponseError",
    "Budget",
    "BudgetExceeded",
    "MissingAPIKeyError",
    "OpenAICompatibleBackend",
    "Prices",
    "RetriesExhausted",
    "RetryPolicy",
    "Spend",
    "ToolCall",
    "ToolSpec",
    "Turn",
    "Usage",
    "load_price_table",
    "tool_result_message",
    "user_message",
]
