"""Recipes: named, versioned functions from inputs to artifacts and metrics."""

from modelfab.recipes.base import RecipeContext, RecipeSpec, get_recipe, list_recipes

__all__ = ["RecipeContext", "RecipeSpec", "get_recipe", "list_recipes"]
