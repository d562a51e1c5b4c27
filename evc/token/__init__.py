"""The local authorization list: `token/<idTag>` instances (one type, also named token)."""
