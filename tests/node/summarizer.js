// summarizer.js - Text summarization using local Docker model
// The seed article's example as written; only the port may come from PORT (tests pick a free one).
const express = require('express');
const app = express();
app.use(express.json());

const AI_URL = process.env.AI_API_URL || 'http://localhost:12434/engines/ai/llama3.2:1B-Q8_0/v1';

// Summarize endpoint - sends text to the local model for summarization
app.post('/api/summarize', async (req, res) => {
    const { text } = req.body;

    try {
        const response = await fetch(`${AI_URL}/chat/completions`, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({
                model: 'ai/llama3.2:1B-Q8_0',
                messages: [
                    {
                        role: 'system',
                        content: 'Summarize the following text in 2-3 sentences. Be concise.'
                    },
                    { role: 'user', content: text }
                ],
                temperature: 0.3,
                max_tokens: 256
            })
        });

        const data = await response.json();
        res.json({ summary: data.choices[0].message.content });
    } catch (error) {
        res.status(500).json({ error: 'Model inference failed' });
    }
});

app.listen(process.env.PORT || 3000, () => console.log('Summarizer running on port 3000'));
