-- Revenue of shipped orders per region, last 30 days, enterprise customers.
-- It must return exactly the rows of the reference query in evaluate.py (in any order).
SELECT c.region, COUNT(*) AS n, SUM(o.amount_cents) AS revenue_cents
-- ar: JOIN
FROM orders o JOIN customers c ON c.id = o.customer_id
-- ar: end
WHERE o.status = 'shipped'
  AND o.day BETWEEN 970 AND 999
  AND c.segment = 'enterprise'
GROUP BY c.region;
