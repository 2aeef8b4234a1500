// The "Run now" button of a task, shared by the task list and a task's page: it starts a run and opens it.

import { api } from './api.js';
import { h, toast, busy } from './dom.js';
import { navigate } from './router.js';

export function runButton(task, { small = true } = {}) {
  const button = h(`button.button${small ? '.small' : ''}`, { type: 'button', 'aria-label': `Run now: ${task.name}` }, 'Run now');
  button.addEventListener('click', () => busy(button, async () => {
    try {
      const run = await api(`/tasks/${task.id}/execute`, { method: 'POST' });
      navigate(`/runs/${run.id}`);
    } catch (error) {
      toast(error.detail || error.message, 'error');
    }
  }));
  return button;
}
