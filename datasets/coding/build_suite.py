#!/usr/bin/env python3
"""Build datasets/coding-suite.jsonl from the tasks below (written for smolbit; CC0).

Each task: id, category (one of the original report's ten), prompt, entry_point, test_setup,
tests (assert statements), canonical_solution. The builder checks that every canonical solution
passes its tests and that a wrong solution (the entry point replaced by a stub) fails them, then
writes one JSON object per line.

    python3 datasets/coding/build_suite.py
"""

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "coding-suite.jsonl"
CATEGORIES = [
    "function_generation",
    "code_completion",
    "docstring_generation",
    "simple_refactoring",
    "bug_fixing",
    "algorithm_implementation",
    "data_structure_implementation",
    "string_processing",
    "file_operations",
    "async_programming",
]

T = []


def task(id, category, prompt, entry_point, solution, tests, setup=""):
    T.append(
        {
            "id": id,
            "category": category,
            "prompt": textwrap.dedent(prompt).strip(),
            "entry_point": entry_point,
            "test_setup": textwrap.dedent(setup).strip(),
            "tests": tests,
            "canonical_solution": textwrap.dedent(solution).strip() + "\n",
        }
    )


# ---------------------------------------------------------------- function generation
task("fg-factorial", "function_generation",
     "Write a Python function named calculate_factorial(n) that returns n! for a non-negative integer n and raises ValueError for negative n.",
     "calculate_factorial", """
def calculate_factorial(n):
    if n < 0:
        raise ValueError("n must be non-negative")
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
""", ["assert calculate_factorial(0) == 1", "assert calculate_factorial(5) == 120", "assert calculate_factorial(10) == 3628800",
      "try:\n    calculate_factorial(-1)\n    assert False\nexcept ValueError:\n    pass"])
task("fg-is-prime", "function_generation",
     "Write a Python function is_prime(n) that returns True if the integer n is a prime number and False otherwise.",
     "is_prime", """
def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
""", ["assert is_prime(2) and is_prime(13) and is_prime(7919)", "assert not is_prime(1) and not is_prime(0) and not is_prime(-7)", "assert not is_prime(91) and not is_prime(100)"])
task("fg-clamp", "function_generation",
     "Write a Python function clamp(value, low, high) that returns value limited to the inclusive range [low, high].",
     "clamp", """
def clamp(value, low, high):
    return max(low, min(high, value))
""", ["assert clamp(5, 0, 10) == 5", "assert clamp(-3, 0, 10) == 0", "assert clamp(42, 0, 10) == 10", "assert clamp(2.5, 1.0, 2.0) == 2.0"])
task("fg-flatten", "function_generation",
     "Write a Python function flatten(nested) that takes a list which may contain nested lists to any depth and returns a flat list of all the non-list elements in order.",
     "flatten", """
def flatten(nested):
    out = []
    for item in nested:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out
""", ["assert flatten([1, [2, [3, [4]], 5]]) == [1, 2, 3, 4, 5]", "assert flatten([]) == []", "assert flatten([[[]], 'a', ['b']]) == ['a', 'b']"])
task("fg-fizzbuzz", "function_generation",
     "Write a Python function fizzbuzz(n) that returns a list of strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for multiples of both, and the number as a string otherwise.",
     "fizzbuzz", """
def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        if i % 15 == 0:
            out.append("FizzBuzz")
        elif i % 3 == 0:
            out.append("Fizz")
        elif i % 5 == 0:
            out.append("Buzz")
        else:
            out.append(str(i))
    return out
""", ["assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']", "assert fizzbuzz(15)[-1] == 'FizzBuzz'", "assert fizzbuzz(0) == []"])
task("fg-mean-median", "function_generation",
     "Write a Python function mean_and_median(values) that returns a tuple (mean, median) of a non-empty list of numbers.",
     "mean_and_median", """
def mean_and_median(values):
    s = sorted(values)
    n = len(s)
    mean = sum(s) / n
    mid = n // 2
    median = s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
    return mean, median
""", ["assert mean_and_median([3, 1, 2]) == (2.0, 2)", "assert mean_and_median([1, 2, 3, 4]) == (2.5, 2.5)", "assert mean_and_median([5]) == (5.0, 5)"])

# ---------------------------------------------------------------- code completion
task("cc-stack-push-pop", "code_completion",
     """
     Complete the following Python class so that push adds an item, pop removes and returns the most recently pushed item (raising IndexError when empty), and size returns the number of items:

     class Stack:
         def __init__(self):
             self.items = []

         def push(self, item):
             ...

         def pop(self):
             ...

         def size(self):
             ...
     """, "Stack", """
class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()

    def size(self):
        return len(self.items)
""", ["s = Stack(); s.push(1); s.push(2); assert s.pop() == 2 and s.size() == 1",
      "s = Stack()\ntry:\n    s.pop()\n    assert False\nexcept IndexError:\n    pass"])
task("cc-word-count", "code_completion",
     """
     Complete the function so it returns a dict mapping each lower-cased word of text to its count (words are separated by whitespace):

     def word_count(text):
         counts = {}
         for word in text.split():
             ...
         return counts
     """, "word_count", """
def word_count(text):
    counts = {}
    for word in text.split():
        w = word.lower()
        counts[w] = counts.get(w, 0) + 1
    return counts
""", ["assert word_count('a b A c b a') == {'a': 3, 'b': 2, 'c': 1}", "assert word_count('') == {}"])
task("cc-running-sum", "code_completion",
     """
     Complete the function so it returns the running (cumulative) sums of the list:

     def running_sum(values):
         total = 0
         result = []
         ...
     """, "running_sum", """
def running_sum(values):
    total = 0
    result = []
    for v in values:
        total += v
        result.append(total)
    return result
""", ["assert running_sum([1, 2, 3, 4]) == [1, 3, 6, 10]", "assert running_sum([]) == []", "assert running_sum([-1, 1]) == [-1, 0]"])
task("cc-rectangle", "code_completion",
     """
     Complete the class with area() and perimeter() methods and a __repr__ that returns 'Rectangle(w=<width>, h=<height>)':

     class Rectangle:
         def __init__(self, width, height):
             self.width = width
             self.height = height
     """, "Rectangle", """
class Rectangle:
    def __init__(self, width, height):
        self.width = width
        self.height = height

    def area(self):
        return self.width * self.height

    def perimeter(self):
        return 2 * (self.width + self.height)

    def __repr__(self):
        return f"Rectangle(w={self.width}, h={self.height})"
""", ["r = Rectangle(3, 4); assert r.area() == 12 and r.perimeter() == 14", "assert repr(Rectangle(1, 2)) == 'Rectangle(w=1, h=2)'"])
task("cc-merge-dicts", "code_completion",
     """
     Complete the function so it merges dictionaries left to right, where values for keys present in several dicts are added together:

     def merge_counts(*dicts):
         merged = {}
         ...
         return merged
     """, "merge_counts", """
def merge_counts(*dicts):
    merged = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = merged.get(k, 0) + v
    return merged
""", ["assert merge_counts({'a': 1}, {'a': 2, 'b': 3}) == {'a': 3, 'b': 3}", "assert merge_counts() == {}"])
task("cc-safe-divide", "code_completion",
     """
     Complete the function so it returns a / b, or the given default when b is zero:

     def safe_divide(a, b, default=None):
         ...
     """, "safe_divide", """
def safe_divide(a, b, default=None):
    if b == 0:
        return default
    return a / b
""", ["assert safe_divide(6, 3) == 2", "assert safe_divide(1, 0) is None", "assert safe_divide(1, 0, default=0) == 0"])

# ---------------------------------------------------------------- docstring generation
for i, (name, code, tests) in enumerate([
    ("celsius_to_fahrenheit", "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32", ["assert celsius_to_fahrenheit(100) == 212", "assert celsius_to_fahrenheit(-40) == -40"]),
    ("chunk", "def chunk(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]", ["assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]", "assert chunk([], 3) == []"]),
    ("dedupe", "def dedupe(items):\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out", ["assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]"]),
    ("gcd", "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return abs(a)", ["assert gcd(12, 18) == 6", "assert gcd(7, 0) == 7"]),
    ("invert_dict", "def invert_dict(d):\n    return {v: k for k, v in d.items()}", ["assert invert_dict({'a': 1, 'b': 2}) == {1: 'a', 2: 'b'}"]),
    ("is_sorted", "def is_sorted(xs):\n    return all(a <= b for a, b in zip(xs, xs[1:]))", ["assert is_sorted([1, 2, 2, 5])", "assert not is_sorted([2, 1])"]),
]):
    sol = code.split("\n", 1)
    documented = sol[0] + '\n    """Documented by the model."""\n' + sol[1]
    task(f"dg-{name}", "docstring_generation",
         f"Add a docstring to the following Python function that explains what it does, its arguments and its return value. Return the complete function.\n\n{code}",
         name, documented, tests + [f"assert {name}.__doc__ is not None and len({name}.__doc__.strip()) >= 10"])

# ---------------------------------------------------------------- simple refactoring
task("rf-list-comprehension", "simple_refactoring",
     """
     Refactor this function to use a list comprehension, keeping its behaviour:

     def squares_of_evens(numbers):
         result = []
         for n in numbers:
             if n % 2 == 0:
                 result.append(n * n)
         return result
     """, "squares_of_evens", """
def squares_of_evens(numbers):
    return [n * n for n in numbers if n % 2 == 0]
""", ["assert squares_of_evens([1, 2, 3, 4]) == [4, 16]", "assert squares_of_evens([]) == []"])
task("rf-early-return", "simple_refactoring",
     """
     Refactor this function to remove the nested ifs (use early returns), keeping its behaviour:

     def grade(score):
         if score >= 0:
             if score >= 90:
                 return "A"
             else:
                 if score >= 75:
                     return "B"
                 else:
                     return "C"
         else:
             return "invalid"
     """, "grade", """
def grade(score):
    if score < 0:
        return "invalid"
    if score >= 90:
        return "A"
    if score >= 75:
        return "B"
    return "C"
""", ["assert grade(95) == 'A' and grade(80) == 'B' and grade(10) == 'C' and grade(-1) == 'invalid'"])
task("rf-dict-get", "simple_refactoring",
     """
     Refactor this function to use dict.get with a default instead of the membership test, keeping its behaviour:

     def lookup(table, key):
         if key in table:
             return table[key]
         return "unknown"
     """, "lookup", """
def lookup(table, key):
    return table.get(key, "unknown")
""", ["assert lookup({'a': 1}, 'a') == 1", "assert lookup({}, 'x') == 'unknown'"])
task("rf-enumerate", "simple_refactoring",
     """
     Refactor this function to use enumerate instead of range(len(...)), keeping its behaviour:

     def indexes_of(items, target):
         found = []
         for i in range(len(items)):
             if items[i] == target:
                 found.append(i)
         return found
     """, "indexes_of", """
def indexes_of(items, target):
    return [i for i, item in enumerate(items) if item == target]
""", ["assert indexes_of(['a', 'b', 'a'], 'a') == [0, 2]", "assert indexes_of([], 1) == []"])
task("rf-extract-function", "simple_refactoring",
     """
     Refactor this code by extracting the repeated price computation into a helper, keeping total_price's behaviour:

     def total_price(items):
         total = 0
         for name, price, qty in items:
             if qty > 10:
                 total += price * qty * 0.9
             else:
                 total += price * qty
         return round(total, 2)
     """, "total_price", """
def line_price(price, qty):
    discount = 0.9 if qty > 10 else 1.0
    return price * qty * discount


def total_price(items):
    return round(sum(line_price(price, qty) for _, price, qty in items), 2)
""", ["assert total_price([('a', 2.0, 3), ('b', 1.0, 20)]) == 24.0", "assert total_price([]) == 0"])
task("rf-zip", "simple_refactoring",
     """
     Refactor this function to iterate with zip, keeping its behaviour:

     def dot(a, b):
         total = 0
         for i in range(len(a)):
             total += a[i] * b[i]
         return total
     """, "dot", """
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))
""", ["assert dot([1, 2, 3], [4, 5, 6]) == 32", "assert dot([], []) == 0"])

# ---------------------------------------------------------------- bug fixing
task("bf-average", "bug_fixing",
     """
     Find the bug in this code and fix it. The function should return the average of a non-empty list:

     def average(xs):
         return sum(xs) / len(xs) + 1
     """, "average", """
def average(xs):
    return sum(xs) / len(xs)
""", ["assert average([1, 2, 3]) == 2", "assert average([5]) == 5"])
task("bf-off-by-one", "bug_fixing",
     """
     Find the bug in this code and fix it. The function should return the sum of the integers from 1 to n inclusive:

     def sum_to(n):
         total = 0
         for i in range(1, n):
             total += i
         return total
     """, "sum_to", """
def sum_to(n):
    total = 0
    for i in range(1, n + 1):
        total += i
    return total
""", ["assert sum_to(10) == 55", "assert sum_to(1) == 1", "assert sum_to(0) == 0"])
task("bf-mutable-default", "bug_fixing",
     """
     Find the bug in this code and fix it. Each call without a list should start from a new empty list:

     def append_item(item, items=[]):
         items.append(item)
         return items
     """, "append_item", """
def append_item(item, items=None):
    if items is None:
        items = []
    items.append(item)
    return items
""", ["assert append_item(1) == [1]", "assert append_item(2) == [2]", "assert append_item(3, [0]) == [0, 3]"])
task("bf-max", "bug_fixing",
     """
     Find the bug in this code and fix it. The function should return the largest number in a non-empty list, including lists of negative numbers:

     def largest(xs):
         best = 0
         for x in xs:
             if x > best:
                 best = x
         return best
     """, "largest", """
def largest(xs):
    best = xs[0]
    for x in xs[1:]:
        if x > best:
            best = x
    return best
""", ["assert largest([3, 9, 2]) == 9", "assert largest([-5, -2, -9]) == -2"])
task("bf-palindrome", "bug_fixing",
     """
     Find the bug in this code and fix it. The function should report whether a string is a palindrome, ignoring case:

     def is_palindrome(s):
         return s == s[::-1].lower()
     """, "is_palindrome", """
def is_palindrome(s):
    s = s.lower()
    return s == s[::-1]
""", ["assert is_palindrome('Racecar')", "assert not is_palindrome('hello')", "assert is_palindrome('')"])
task("bf-binary-search", "bug_fixing",
     """
     Find the bug in this code and fix it. The function should return the index of target in the sorted list, or -1:

     def binary_search(xs, target):
         lo, hi = 0, len(xs)
         while lo < hi:
             mid = (lo + hi) // 2
             if xs[mid] < target:
                 lo = mid
             elif xs[mid] > target:
                 hi = mid
             else:
                 return mid
         return -1
     """, "binary_search", """
def binary_search(xs, target):
    lo, hi = 0, len(xs)
    while lo < hi:
        mid = (lo + hi) // 2
        if xs[mid] < target:
            lo = mid + 1
        elif xs[mid] > target:
            hi = mid
        else:
            return mid
    return -1
""", ["assert binary_search([1, 3, 5, 7], 7) == 3", "assert binary_search([1, 3, 5, 7], 4) == -1", "assert binary_search([], 1) == -1"])

# ---------------------------------------------------------------- algorithm implementation
task("al-bubble-sort", "algorithm_implementation",
     "Implement bubble_sort(items) in Python, returning a new sorted list without using sorted() or list.sort().",
     "bubble_sort", """
def bubble_sort(items):
    xs = list(items)
    n = len(xs)
    for i in range(n):
        for j in range(n - 1 - i):
            if xs[j] > xs[j + 1]:
                xs[j], xs[j + 1] = xs[j + 1], xs[j]
    return xs
""", ["assert bubble_sort([5, 1, 4, 2, 8]) == [1, 2, 4, 5, 8]", "data = [3, 2, 1]; assert bubble_sort(data) == [1, 2, 3] and data == [3, 2, 1]", "assert bubble_sort([]) == []"])
task("al-fibonacci", "algorithm_implementation",
     "Implement fibonacci(n) in Python returning the n-th Fibonacci number (fibonacci(0) == 0, fibonacci(1) == 1) in linear time.",
     "fibonacci", """
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""", ["assert [fibonacci(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]", "assert fibonacci(90) == 2880067194370816120"])
task("al-gcd-lcm", "algorithm_implementation",
     "Implement lcm(a, b) in Python returning the least common multiple of two positive integers, using Euclid's algorithm for the gcd.",
     "lcm", """
def lcm(a, b):
    x, y = a, b
    while y:
        x, y = y, x % y
    return a * b // x
""", ["assert lcm(4, 6) == 12", "assert lcm(7, 5) == 35", "assert lcm(3, 3) == 3"])
task("al-merge-sorted", "algorithm_implementation",
     "Implement merge_sorted(a, b) in Python that merges two sorted lists into one sorted list in linear time.",
     "merge_sorted", """
def merge_sorted(a, b):
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]
""", ["assert merge_sorted([1, 4, 9], [2, 3, 10]) == [1, 2, 3, 4, 9, 10]", "assert merge_sorted([], [1]) == [1]"])
task("al-primes-sieve", "algorithm_implementation",
     "Implement primes_up_to(n) in Python with the sieve of Eratosthenes, returning all primes <= n in increasing order.",
     "primes_up_to", """
def primes_up_to(n):
    if n < 2:
        return []
    sieve = [True] * (n + 1)
    sieve[0] = sieve[1] = False
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            for j in range(i * i, n + 1, i):
                sieve[j] = False
    return [i for i, p in enumerate(sieve) if p]
""", ["assert primes_up_to(20) == [2, 3, 5, 7, 11, 13, 17, 19]", "assert primes_up_to(1) == []", "assert len(primes_up_to(1000)) == 168"])
task("al-bfs-shortest", "algorithm_implementation",
     "Implement shortest_path_length(graph, start, goal) in Python using breadth-first search on an unweighted graph given as a dict of adjacency lists; return the number of edges on the shortest path, or -1 if unreachable.",
     "shortest_path_length", """
from collections import deque


def shortest_path_length(graph, start, goal):
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        node, dist = queue.popleft()
        if node == goal:
            return dist
        for nxt in graph.get(node, []):
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, dist + 1))
    return -1
""", ["g = {'a': ['b', 'c'], 'b': ['d'], 'c': ['d'], 'd': ['e']}\nassert shortest_path_length(g, 'a', 'e') == 3",
      "assert shortest_path_length({'a': []}, 'a', 'z') == -1", "assert shortest_path_length({}, 'x', 'x') == 0"])

# ---------------------------------------------------------------- data structure implementation
task("ds-queue", "data_structure_implementation",
     "Implement a class Queue in Python with enqueue(item), dequeue() (FIFO; raises IndexError when empty), is_empty() and __len__.",
     "Queue", """
from collections import deque


class Queue:
    def __init__(self):
        self._items = deque()

    def enqueue(self, item):
        self._items.append(item)

    def dequeue(self):
        if not self._items:
            raise IndexError("dequeue from empty queue")
        return self._items.popleft()

    def is_empty(self):
        return not self._items

    def __len__(self):
        return len(self._items)
""", ["q = Queue(); q.enqueue(1); q.enqueue(2); assert q.dequeue() == 1 and len(q) == 1 and not q.is_empty()",
      "q = Queue()\ntry:\n    q.dequeue()\n    assert False\nexcept IndexError:\n    pass"])
task("ds-linked-list", "data_structure_implementation",
     "Implement a singly linked list class LinkedList in Python with append(value), prepend(value), to_list() returning the values in order, and __len__.",
     "LinkedList", """
class _Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next


class LinkedList:
    def __init__(self):
        self.head = None
        self.size = 0

    def append(self, value):
        node = _Node(value)
        if self.head is None:
            self.head = node
        else:
            cur = self.head
            while cur.next:
                cur = cur.next
            cur.next = node
        self.size += 1

    def prepend(self, value):
        self.head = _Node(value, self.head)
        self.size += 1

    def to_list(self):
        out, cur = [], self.head
        while cur:
            out.append(cur.value)
            cur = cur.next
        return out

    def __len__(self):
        return self.size
""", ["l = LinkedList(); l.append(2); l.append(3); l.prepend(1); assert l.to_list() == [1, 2, 3] and len(l) == 3", "assert LinkedList().to_list() == []"])
task("ds-lru-cache", "data_structure_implementation",
     "Implement a class LRUCache(capacity) in Python with get(key) returning the value or -1, and put(key, value) that evicts the least recently used key when over capacity.",
     "LRUCache", """
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self.data = OrderedDict()

    def get(self, key):
        if key not in self.data:
            return -1
        self.data.move_to_end(key)
        return self.data[key]

    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)
""", ["c = LRUCache(2); c.put(1, 1); c.put(2, 2); assert c.get(1) == 1; c.put(3, 3); assert c.get(2) == -1 and c.get(3) == 3 and c.get(1) == 1"])
task("ds-min-stack", "data_structure_implementation",
     "Implement a class MinStack in Python with push(x), pop(), top() and get_min(), where get_min returns the smallest element currently in the stack in constant time.",
     "MinStack", """
class MinStack:
    def __init__(self):
        self.items = []
        self.mins = []

    def push(self, x):
        self.items.append(x)
        self.mins.append(x if not self.mins else min(x, self.mins[-1]))

    def pop(self):
        self.mins.pop()
        return self.items.pop()

    def top(self):
        return self.items[-1]

    def get_min(self):
        return self.mins[-1]
""", ["s = MinStack(); s.push(3); s.push(1); s.push(2); assert s.get_min() == 1 and s.top() == 2; s.pop(); s.pop(); assert s.get_min() == 3"])
task("ds-bst", "data_structure_implementation",
     "Implement a binary search tree class BST in Python with insert(value), contains(value) and in_order() returning the values in sorted order (duplicates ignored).",
     "BST", """
class BST:
    def __init__(self):
        self.root = None

    def insert(self, value):
        if self.root is None:
            self.root = [value, None, None]
            return
        node = self.root
        while True:
            if value == node[0]:
                return
            side = 1 if value < node[0] else 2
            if node[side] is None:
                node[side] = [value, None, None]
                return
            node = node[side]

    def contains(self, value):
        node = self.root
        while node:
            if value == node[0]:
                return True
            node = node[1] if value < node[0] else node[2]
        return False

    def in_order(self):
        out = []

        def walk(n):
            if n:
                walk(n[1])
                out.append(n[0])
                walk(n[2])

        walk(self.root)
        return out
""", ["t = BST()\nfor v in [5, 3, 8, 1, 4, 5]:\n    t.insert(v)\nassert t.in_order() == [1, 3, 4, 5, 8] and t.contains(4) and not t.contains(7)"])
task("ds-counter", "data_structure_implementation",
     "Implement a class Counter in Python (without collections.Counter) with add(item), count(item) returning 0 for unseen items, and most_common(n) returning the n most frequent (item, count) pairs, most frequent first (ties in first-seen order).",
     "Counter", """
class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, item):
        self.counts[item] = self.counts.get(item, 0) + 1

    def count(self, item):
        return self.counts.get(item, 0)

    def most_common(self, n):
        return sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]
""", ["c = Counter()\nfor w in 'a b a c a b'.split():\n    c.add(w)\nassert c.count('a') == 3 and c.count('z') == 0 and c.most_common(2) == [('a', 3), ('b', 2)]"])

# ---------------------------------------------------------------- string processing
task("sp-reverse-words", "string_processing",
     "Write a Python function reverse_words(sentence) that returns the words of the sentence in reverse order, separated by single spaces.",
     "reverse_words", """
def reverse_words(sentence):
    return " ".join(reversed(sentence.split()))
""", ["assert reverse_words('the quick  brown fox') == 'fox brown quick the'", "assert reverse_words('') == ''"])
task("sp-vowels", "string_processing",
     "Write a Python function count_vowels(text) that returns the number of vowels (a, e, i, o, u, either case) in text.",
     "count_vowels", """
def count_vowels(text):
    return sum(1 for ch in text.lower() if ch in "aeiou")
""", ["assert count_vowels('Hello World') == 3", "assert count_vowels('xyz') == 0", "assert count_vowels('AEIOU') == 5"])
task("sp-anagram", "string_processing",
     "Write a Python function are_anagrams(a, b) that returns True when the two strings are anagrams of each other, ignoring case and spaces.",
     "are_anagrams", """
def are_anagrams(a, b):
    norm = lambda s: sorted(s.replace(" ", "").lower())
    return norm(a) == norm(b)
""", ["assert are_anagrams('Listen', 'Silent')", "assert are_anagrams('a gentleman', 'elegant man')", "assert not are_anagrams('abc', 'abd')"])
task("sp-snake-case", "string_processing",
     "Write a Python function camel_to_snake(name) that converts a camelCase or PascalCase identifier to snake_case.",
     "camel_to_snake", """
def camel_to_snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
""", ["assert camel_to_snake('camelCase') == 'camel_case'", "assert camel_to_snake('PascalCaseName') == 'pascal_case_name'", "assert camel_to_snake('x') == 'x'"])
task("sp-compress", "string_processing",
     "Write a Python function compress(s) that performs run-length encoding, e.g. 'aaabcc' becomes 'a3b1c2'.",
     "compress", """
def compress(s):
    if not s:
        return ""
    out = []
    prev, count = s[0], 1
    for ch in s[1:]:
        if ch == prev:
            count += 1
        else:
            out.append(f"{prev}{count}")
            prev, count = ch, 1
    out.append(f"{prev}{count}")
    return "".join(out)
""", ["assert compress('aaabcc') == 'a3b1c2'", "assert compress('') == ''", "assert compress('z') == 'z1'"])
task("sp-capitalize", "string_processing",
     "Write a Python function title_words(text) that capitalizes the first letter of each word and lower-cases the rest, keeping single spaces between words.",
     "title_words", """
def title_words(text):
    return " ".join(w[:1].upper() + w[1:].lower() for w in text.split())
""", ["assert title_words('hello wORLD') == 'Hello World'", "assert title_words('') == ''"])

# ---------------------------------------------------------------- file operations
task("fo-count-lines", "file_operations",
     "Write a Python function count_lines(path) that returns the number of lines in the text file at path.",
     "count_lines", """
def count_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)
""", ["assert count_lines('three.txt') == 3", "assert count_lines('empty.txt') == 0"],
     setup="open('three.txt', 'w').write('a\\nb\\nc\\n'); open('empty.txt', 'w').close()")
task("fo-write-read-json", "file_operations",
     "Write two Python functions: save_json(path, data) that writes data as JSON to path, and load_json(path) that reads it back.",
     "load_json", """
import json


def save_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
""", ["save_json('d.json', {'a': [1, 2], 'b': None}); assert load_json('d.json') == {'a': [1, 2], 'b': None}"])
task("fo-csv-sum", "file_operations",
     "Write a Python function sum_column(path, column) that reads a CSV file with a header row and returns the sum of the numeric values in the named column.",
     "sum_column", """
import csv


def sum_column(path, column):
    with open(path, newline="", encoding="utf-8") as f:
        return sum(float(row[column]) for row in csv.DictReader(f))
""", ["assert sum_column('data.csv', 'price') == 6.5"],
     setup="open('data.csv', 'w').write('name,price\\na,1.5\\nb,2\\nc,3\\n')")
task("fo-append-log", "file_operations",
     "Write a Python function append_line(path, line) that appends line plus a newline to the file at path, creating the file if needed.",
     "append_line", """
def append_line(path, line):
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\\n")
""", ["append_line('log.txt', 'one'); append_line('log.txt', 'two'); assert open('log.txt').read() == 'one\\ntwo\\n'"])
task("fo-list-ext", "file_operations",
     "Write a Python function files_with_extension(directory, ext) that returns the sorted names of the files directly inside directory whose names end with ext.",
     "files_with_extension", """
import os


def files_with_extension(directory, ext):
    return sorted(
        name for name in os.listdir(directory)
        if name.endswith(ext) and os.path.isfile(os.path.join(directory, name))
    )
""", ["assert files_with_extension('d', '.py') == ['a.py', 'b.py']"],
     setup="import os\nos.mkdir('d'); os.mkdir('d/sub.py')\nfor n in ['a.py', 'b.py', 'c.txt']:\n    open(os.path.join('d', n), 'w').close()")
task("fo-word-freq-file", "file_operations",
     "Write a Python function top_word(path) that returns the most frequent lower-cased word in the text file at path (ties: the word seen first).",
     "top_word", """
def top_word(path):
    counts = {}
    with open(path, encoding="utf-8") as f:
        for word in f.read().lower().split():
            counts[word] = counts.get(word, 0) + 1
    return max(counts, key=counts.get)
""", ["assert top_word('t.txt') == 'the'"],
     setup="open('t.txt', 'w').write('The cat and the dog saw THE bird and a cat')")

# ---------------------------------------------------------------- async programming
task("as-gather", "async_programming",
     "Write an async Python function fetch_all(coros) that runs the given awaitables concurrently and returns their results in order.",
     "fetch_all", """
import asyncio


async def fetch_all(coros):
    return list(await asyncio.gather(*coros))
""", ["async def v(x, d):\n    await asyncio.sleep(d)\n    return x\nassert asyncio.run(fetch_all([v(1, 0.02), v(2, 0.0)])) == [1, 2]"],
     setup="import asyncio")
task("as-timeout", "async_programming",
     "Write an async Python function with_timeout(coro, seconds, default) that returns the result of coro, or default if it does not finish within seconds.",
     "with_timeout", """
import asyncio


async def with_timeout(coro, seconds, default):
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        return default
""", ["assert asyncio.run(with_timeout(asyncio.sleep(5, result=1), 0.05, 'late')) == 'late'",
      "assert asyncio.run(with_timeout(asyncio.sleep(0, result=1), 1, 'late')) == 1"], setup="import asyncio")
task("as-semaphore", "async_programming",
     "Write an async Python function run_limited(funcs, limit) that calls each zero-argument async function in funcs with at most limit running at once, returning their results in order.",
     "run_limited", """
import asyncio


async def run_limited(funcs, limit):
    sem = asyncio.Semaphore(limit)

    async def run(f):
        async with sem:
            return await f()

    return list(await asyncio.gather(*(run(f) for f in funcs)))
""", ["""state = {'now': 0, 'peak': 0}
def make(i):
    async def f():
        state['now'] += 1
        state['peak'] = max(state['peak'], state['now'])
        await asyncio.sleep(0.01)
        state['now'] -= 1
        return i
    return f
assert asyncio.run(run_limited([make(i) for i in range(6)], 2)) == list(range(6))
assert state['peak'] == 2"""], setup="import asyncio")
task("as-producer-consumer", "async_programming",
     "Write an async Python function sum_via_queue(values) that starts a producer task putting each value on an asyncio.Queue followed by None, and a consumer that sums values until None; return the sum.",
     "sum_via_queue", """
import asyncio


async def sum_via_queue(values):
    q = asyncio.Queue()

    async def producer():
        for v in values:
            await q.put(v)
        await q.put(None)

    async def consumer():
        total = 0
        while True:
            v = await q.get()
            if v is None:
                return total
            total += v

    _, total = await asyncio.gather(producer(), consumer())
    return total
""", ["assert asyncio.run(sum_via_queue([1, 2, 3])) == 6", "assert asyncio.run(sum_via_queue([])) == 0"], setup="import asyncio")
task("as-retry", "async_programming",
     "Write an async Python function retry(func, attempts) that awaits func() and retries on any exception up to attempts times in total, re-raising the last exception.",
     "retry", """
async def retry(func, attempts):
    last = None
    for _ in range(attempts):
        try:
            return await func()
        except Exception as e:
            last = e
    raise last
""", ["""calls = {'n': 0}
async def flaky():
    calls['n'] += 1
    if calls['n'] < 3:
        raise RuntimeError('boom')
    return 'ok'
assert asyncio.run(retry(flaky, 5)) == 'ok' and calls['n'] == 3""",
      """async def bad():
    raise KeyError('x')
try:
    asyncio.run(retry(bad, 2))
    assert False
except KeyError:
    pass"""], setup="import asyncio")
task("as-async-map", "async_programming",
     "Write an async Python function async_map(func, items) that applies the async function func to every item concurrently and returns a dict from item to result.",
     "async_map", """
import asyncio


async def async_map(func, items):
    results = await asyncio.gather(*(func(x) for x in items))
    return dict(zip(items, results))
""", ["async def sq(x):\n    await asyncio.sleep(0)\n    return x * x\nassert asyncio.run(async_map(sq, [1, 2, 3])) == {1: 1, 2: 4, 3: 9}"], setup="import asyncio")


# ---------------------------------------------------------------- build and check


def program(t, solution):
    return "\n\n".join(p for p in [t["test_setup"], solution, "\n".join(t["tests"])] if p) + "\n"


def stub(t):
    name = t["entry_point"]
    if name[0].isupper():
        return f"class {name}:\n    pass\n"
    if t["category"] == "async_programming":
        return f"async def {name}(*args, **kwargs):\n    return None\n"
    return f"def {name}(*args, **kwargs):\n    return None\n"


def run(source):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.py"
        p.write_text(source)
        return subprocess.run([sys.executable, str(p)], cwd=d, capture_output=True, timeout=30).returncode


def main():
    ids = [t["id"] for t in T]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for c in CATEGORIES:
        n = sum(t["category"] == c for t in T)
        assert n >= 5, f"{c}: {n} tasks"
    for t in T:
        assert t["category"] in CATEGORIES, t["id"]
        assert run(program(t, t["canonical_solution"])) == 0, f"{t['id']}: canonical solution fails"
        assert run(program(t, stub(t))) != 0, f"{t['id']}: a stub passes"
    with open(OUT, "w") as f:
        for t in T:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    print(f"wrote {len(T)} tasks to {OUT}")


if __name__ == "__main__":
    main()
