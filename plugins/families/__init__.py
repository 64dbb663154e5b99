"""Task-family plugins: families expand to many member tasks created on demand."""
