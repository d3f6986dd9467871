//! Rendering chat conversations to text with the model's own chat template (Jinja, as transformers does:
//! trim_blocks and lstrip_blocks on, Python string methods available, `raise_exception` an error).

use anyhow::{anyhow, bail, Result};
use minijinja::{context, Environment, Error, ErrorKind};

use super::source::Message;

/// A compiled chat template with its special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` (the template text from tokenizer_config.json, chat_template.jinja or GGUF).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders templates with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("the model's chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders a conversation (no generation prompt: the conversation is complete).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.render_with(messages, false)
    }

    /// Renders a conversation that the model is to continue: with the template's generation prompt (the
    /// start of the assistant's turn), and thinking off (`enable_thinking` false, read by templates that have
    /// the toggle, such as Qwen3's: an empty think block), as the reference toolkit generates.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        self.render_with(messages, true)
    }

    fn render_with(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").expect("added in new");
        t.render(context! {
            messages => messages
                .iter()
                .map(|m| minijinja::Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
                .collect::<minijinja::Value>(),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            add_generation_prompt => add_generation_prompt,
            enable_thinking => false,
        })
        .map_err(|e| anyhow!("the chat template failed on a conversation: {e}"))
    }
}

/// Whether a conversation alternates user and assistant (after an optional system turn), as the seed
/// requires; others are skipped.
pub fn alternates(messages: &[Message]) -> bool {
    let turns = match messages.first() {
        Some(m) if m.role == "system" => &messages[1..],
        _ => messages,
    };
    !turns.is_empty()
        && turns
            .iter()
            .enumerate()
            .all(|(i, m)| m.role == if i % 2 == 0 { "user" } else { "assistant" })
}

/// Fails when a chat dataset meets a model without a template.
pub fn require<'a>(template: Option<&'a ChatTemplate>, dataset: &str) -> Result<&'a ChatTemplate> {
    match template {
        Some(t) => Ok(t),
        None => bail!(
            "dataset {dataset} holds chat conversations but the model has no chat template (tokenizer_config.json chat_template, chat_template.jinja or GGUF metadata)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_like_jinja2_with_trim_blocks() {
        let source = "{{ bos_token }}{% for m in messages %}\n<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let text = t.render(&[m("user", " hi "), m("assistant", "hello")]).unwrap();
        assert_eq!(text, "<s><|user|>hi</s>\n<|assistant|>hello</s>\n");
    }

    #[test]
    fn generation_prompts_turn_thinking_off_where_the_template_has_the_toggle() {
        // Qwen3's generation prompt, abridged.
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
            {% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let prompt = t.render_prompt(&[m("user", "hi")]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        // A finished conversation has no generation prompt, and so no think block.
        assert_eq!(
            t.render(&[m("user", "hi")]).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let source = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        assert_eq!(t.render(&[m("user", " abc ")]).unwrap(), "ABC");
        let e = t.render(&[m("system", "x")]).unwrap_err().to_string();
        assert!(e.contains("no system"), "{e}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn alternation() {
        assert!(alternates(&[m("user", "a"), m("assistant", "b")]));
        assert!(alternates(&[m("system", "s"), m("user", "a")]));
        assert!(!alternates(&[m("assistant", "b"), m("user", "a")]));
        assert!(!alternates(&[m("user", "a"), m("user", "b")]));
        assert!(!alternates(&[]));
    }
}
