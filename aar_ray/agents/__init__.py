"""Researcher agents: the LLM backends they think through (a neutral conversation format over
Claude and any OpenAI-compatible endpoint) and the token/dollar/experiment/hour budgets that
bound them, per researcher and per campaign."""

from aar_ray.agents.backends import (
    AnthropicBackend,
    Backend,
    BackendError,
    BackendRequestError,
    BackendResponseError,
    BudgetedBackend,
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
from aar_ray.agents.budget import Budget, BudgetExceeded, CampaignBudget, ResearcherBudget, Spend

__all__ = [
    "AnthropicBackend",
    "Backend",
    "BackendError",
    "BackendRequestError",
    "BackendResponseError",
    "Budget",
    "BudgetExceeded",
    "BudgetedBackend",
    "CampaignBudget",
    "MissingAPIKeyError",
    "OpenAICompatibleBackend",
    "Prices",
    "ResearcherBudget",
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
